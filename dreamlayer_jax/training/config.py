"""`TrainConfig`: every knob of a training run, loaded from a `configs/*.py` file.

A config file defines `get_config()` returning a `TrainConfig` or a dict of its fields;
`--set key=value [key=value ...]` overrides fields (values parsed as Python literals,
falling back to the raw string). `FIELD_HELP` says what each field means
(`train.py --show-config CONFIG` prints them with their values), `fit_mesh` lays a
`mesh` with a -1 over any device count, and a run's config is kept in its workdir
(`save_run_config` / `load_run_config`) so that `--resume` needs no repeated `--set`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamlayer_jax.errors import ConfigError

MODES = ("diffusion", "transparency")
TRAIN_PARAMS = ("all", "dreamlayer", "kv")  # optimizer.param_labels says which leaves each trains
DTYPES = ("float32", "bfloat16")

FIELD_HELP: dict[str, str] = {
    "model": "base model folder or hub id (a diffusers SD folder or a DreamLayer folder, "
             "e.g. one written by dreamlayer_jax.cli.init_model)",
    "data_dir": "TFDS dataset (dreamlayer-build-dataset's --out, or its versioned "
                "dreamlayer_scenes/<config>/1.0.0 folder); empty = in-memory synthetic scenes",
    "data_cache": "latent cache (dreamlayer-cache-latents' --out): latents and text "
                  "embeddings computed once, the encoders skipped; instead of data_dir",
    "split": "dataset split to train on",
    "synthetic_scenes": "number of in-memory synthetic scenes when data_dir is empty",
    "synthetic_resolution": "side in pixels of the in-memory synthetic scenes",
    "max_layers": "layer slots per scene (background + foregrounds + global); 0 = the model's",
    "dreamlayer": "DreamLayerConfig fields set on the model, e.g. {'lora_rank': 16} or "
                  "{'variant': 'paper'}",
    "mode": "'diffusion' (the layer UNet) or 'transparency' (the latent codec's alpha decoder)",
    "transparency": "mode 'transparency': the decoder to train: '' = the model's "
                    "transparency_decoder/; a path = start from that file (LayerDiffuse's "
                    "vae_transparent_decoder.safetensors, a convert_layerdiffuse folder, an "
                    "export); 'layerdiffuse' = a fresh LayerDiffuse decoder",
    "transparency_config": "UNet1024Config fields of a fresh LayerDiffuse decoder "
                           "(transparency='layerdiffuse'), e.g. {'block_out_channels': ...}",
    "curriculum": "(start_step, max_foregrounds) stages; () = every scene from the start",
    "seed": "seed of the initial state, noise, data order and augmentation",
    "num_steps": "optimizer steps of the whole run (a resumed run continues to it)",
    "batch_size": "global batch (split over processes and the mesh's data*fsdp axes)",
    "learning_rate": "peak learning rate",
    "warmup_steps": "linear warm-up steps",
    "end_lr_ratio": "the cosine decay ends at learning_rate * end_lr_ratio (1 = constant)",
    "cooldown_steps": "0: the cosine decay spans the run after warm-up; N > 0: the rate "
                      "stays at its peak until the last N steps, which decay it (a constant "
                      "run extended with --resume can end on a cooldown)",
    "weight_decay": "AdamW weight decay",
    "adam_b1": "AdamW beta1",
    "adam_b2": "AdamW beta2",
    "grad_clip": "global gradient-norm clip",
    "grad_accum": "micro-batches accumulated per step",
    "ema_decay": "decay of the exported EMA weights",
    "train_params": "'all' | 'dreamlayer' (LoRA, role embedding) | 'kv' (paper variant)",
    "train_text_encoder": "train the text encoder(s) with the UNet (needs train_params 'all' "
                          "and raw scenes; the export writes the trained encoders)",
    "compute_dtype": "'float32' or 'bfloat16' (bf16 compute, f32 master weights)",
    "prediction_type": "'epsilon' | 'v_prediction' | 'sample'; empty = the scheduler's",
    "min_snr_gamma": "min-SNR loss weighting gamma; 0 = off",
    "timestep_range": "(low, high): train on timesteps low <= t < high only (a noise-level "
                      "expert, e.g. (0, 250) to fine-tune the low-noise steps); (0, 0) = all",
    "timestep_focus": "(low, high, p): each scene's timestep drawn from low <= t < high with "
                      "probability p, from the whole range otherwise (more of the steps where "
                      "the sampler lays objects out); p = 0 = uniform",
    "edge_loss_weight": "foreground layers' loss weighted 1 + w at their alpha edges, "
                        "renormalised per layer (losses.edge_weights); 0 = uniform",
    "role_loss_weights": "loss weights of (background, foregrounds, global)",
    "slot_buckets": "batches of alike foreground counts padded to their own slot count, "
                    "not max_layers (data.slot_buckets; raw scenes, no curriculum)",
    "flip_prob": "probability of a horizontal flip of a training scene",
    "prompt_dropout": "probability of dropping a prompt (classifier-free guidance)",
    "caca": "train with CACA (context-aware cross-attention)",
    "lssa": "train with LSSA (layer-shared self-attention)",
    "context_loss_weight": "paper variant: weight of the context-map loss L_c",
    "layout_loss_weight": "paper variant: weight of the layout loss L_layout",
    "max_nonfinite": "consecutive non-finite steps before the run stops",
    "mesh": "(data, fsdp, layer) device mesh; one -1 takes the remaining devices and makes "
            "the mesh fit any device count",
    "attention_backend": "'auto' | 'xla' | 'cudnn' | 'splash'; empty = the model's",
    "checkpoint_every": "steps between checkpoints (the last step is always saved)",
    "keep_checkpoints": "checkpoints kept in WORKDIR/checkpoints",
    "async_checkpoints": "write checkpoints in the background",
    "log_every": "steps between TensorBoard scalars (first and last steps always logged)",
    "sample_every": "steps between sample grids (first and last too); 0 = never",
    "sample_steps": "denoising steps of the sample grids",
    "sample_scheduler": "scheduler of the sample grids ('ddim', ...); empty = the model's",
    "eval_scenes": "scenes in a sample grid",
    "export": "write the EMA weights to WORKDIR/export at the end",
    "progress": "show a progress bar",
    "extra": "free-form values for experiments (not read by the trainer)",
}


@dataclass(frozen=True)
class TrainConfig:
    """A training run. `batch_size` is global (split over processes and the mesh)."""

    # model and data
    model: str = ""  # base model folder (diffusers layout, optionally with dreamlayer/)
    data_dir: str = ""  # TFDS dataset folder; "" = in-memory synthetic scenes
    data_cache: str = ""  # a latent cache (training.latent_cache) instead of data_dir
    split: str = "train"
    synthetic_scenes: int = 64  # in-memory source size when data_dir is ""
    synthetic_resolution: int = 16
    max_layers: int = 0  # L_max of the batch; 0 = the model's max_layers
    dreamlayer: dict[str, Any] = field(default_factory=dict)  # DreamLayerConfig overrides
    mode: str = "diffusion"
    transparency: str = ""  # mode "transparency": "" | a decoder file | "layerdiffuse"
    transparency_config: dict[str, Any] = field(default_factory=dict)  # a fresh decoder's
    # (start_step, max_foregrounds) stages: from `start_step` on, scenes with at most
    # `max_foregrounds` foregrounds (input_pipeline.make_train_dataset); () = all scenes
    curriculum: tuple[tuple[int, int], ...] = ()
    # optimisation
    seed: int = 0
    num_steps: int = 1000
    batch_size: int = 4
    learning_rate: float = 1e-4
    warmup_steps: int = 100
    end_lr_ratio: float = 0.1  # cosine decays to learning_rate * end_lr_ratio
    cooldown_steps: int = 0  # > 0: constant until the last cooldown_steps, then the decay
    weight_decay: float = 1e-2
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    grad_clip: float = 1.0
    grad_accum: int = 1
    ema_decay: float = 0.999
    train_params: str = "all"  # "all" | "dreamlayer" | "kv" (optimizer.param_labels)
    train_text_encoder: bool = False  # the text encoders train too (step.make_loss_fn)
    compute_dtype: str = "float32"  # "bfloat16": bf16 compute, f32 master weights
    # objective
    prediction_type: str = ""  # "" = the scheduler's
    min_snr_gamma: float = 0.0  # 0 = off
    timestep_range: tuple[int, int] = (0, 0)  # low <= t < high; (0, 0) = every timestep
    timestep_focus: tuple[int, int, float] = (0, 0, 0.0)  # (low, high, p); p = 0 = uniform
    role_loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # bg, fg, global
    edge_loss_weight: float = 0.0  # foregrounds' loss towards their alpha edges; 0 = off
    slot_buckets: bool = False  # pad each batch only as far as its scenes need
    flip_prob: float = 0.5
    prompt_dropout: float = 0.1
    caca: bool = True
    lssa: bool = True
    # the paper variant with CACA: L = L_noise + w_c L_c + w_layout L_layout (paper: 1, 1)
    context_loss_weight: float = 1.0
    layout_loss_weight: float = 1.0
    max_nonfinite: int = 10  # consecutive skipped steps before the run stops
    # scale
    mesh: tuple[int, int, int] = (-1, 1, 1)  # (data, fsdp, layer)
    attention_backend: str = ""  # "" = the model's; "auto" | "xla" | "cudnn" | "splash"
    # bookkeeping
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    log_every: int = 10
    sample_every: int = 0  # 0 = never
    sample_steps: int = 10
    sample_scheduler: str = ""  # eval sampling's scheduler ("ddim", ...); "" = the model's
    eval_scenes: int = 4
    export: bool = True
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:  # JSON and literal overrides give lists: stages are tuples of ints
            stages = tuple((int(start), int(limit)) for start, limit in self.curriculum)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"train config: curriculum={self.curriculum!r} must be "
                              "(start_step, max_foregrounds) pairs") from exc
        object.__setattr__(self, "curriculum", stages)
        self.validate()

    def validate(self) -> None:
        def positive(name: str) -> None:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train config: {name}={getattr(self, name)!r} must be >= 1")

        for name in ("num_steps", "batch_size", "grad_accum", "checkpoint_every",
                     "keep_checkpoints", "log_every", "max_nonfinite", "sample_steps",
                     "eval_scenes", "synthetic_scenes"):
            positive(name)
        if self.mode not in MODES:
            raise ConfigError(f"train config: mode={self.mode!r} must be one of {MODES}")
        if self.transparency or self.transparency_config:
            from dreamlayer_jax.training.transparency import check_transparency_fields

            check_transparency_fields(self)
        if self.train_params not in TRAIN_PARAMS:
            raise ConfigError(f"train config: train_params={self.train_params!r} must be "
                              f"one of {TRAIN_PARAMS}")
        if self.train_text_encoder and (self.train_params != "all" or self.data_cache
                                        or self.mode != "diffusion"):
            raise ConfigError("train config: train_text_encoder needs train_params='all', "
                              "mode='diffusion' and no data_cache (a cache holds the text "
                              "already encoded)")
        if self.slot_buckets and (self.curriculum or self.data_cache):
            raise ConfigError("train config: slot_buckets works on raw scenes without a "
                              "curriculum (a latent cache holds max_layers slots per scene)")
        if self.compute_dtype not in DTYPES:
            raise ConfigError(f"train config: compute_dtype={self.compute_dtype!r} must be "
                              f"one of {DTYPES}")
        if self.attention_backend not in ("", "auto", "xla", "cudnn", "splash"):
            raise ConfigError(f"train config: attention_backend={self.attention_backend!r} "
                              "must be auto, xla, cudnn or splash")
        if self.prediction_type not in ("", "epsilon", "v_prediction", "sample"):
            raise ConfigError(f"train config: prediction_type={self.prediction_type!r}")
        if not self.learning_rate > 0 or not 0 <= self.end_lr_ratio <= 1:
            raise ConfigError("train config: learning_rate must be > 0 and end_lr_ratio in [0, 1]")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train config: ema_decay={self.ema_decay} must lie in [0, 1)")
        low, high = self.timestep_range
        if (low, high) != (0, 0) and not 0 <= low < high:
            raise ConfigError(f"train config: timestep_range={self.timestep_range!r} must be "
                              "(low, high) with 0 <= low < high, or (0, 0) for all timesteps")
        f_low, f_high, f_prob = self.timestep_focus
        if not 0 <= f_prob <= 1 or (f_prob and not low <= f_low < f_high <= (high or math.inf)):
            raise ConfigError(f"train config: timestep_focus={self.timestep_focus!r} must be "
                              "(low, high, p) with 0 <= low < high (inside timestep_range) and "
                              "p in [0, 1]")
        if min(self.warmup_steps, self.sample_every, self.min_snr_gamma,
               self.edge_loss_weight, self.cooldown_steps) < 0:
            raise ConfigError("train config: warmup_steps, sample_every, min_snr_gamma, "
                              "edge_loss_weight and cooldown_steps must be >= 0")
        if self.cooldown_steps and self.warmup_steps + self.cooldown_steps > self.num_steps:
            raise ConfigError(f"train config: warmup_steps + cooldown_steps "
                              f"({self.warmup_steps} + {self.cooldown_steps}) exceed "
                              f"num_steps={self.num_steps}")
        if len(self.role_loss_weights) != 3 or min(self.role_loss_weights) < 0:
            raise ConfigError("train config: role_loss_weights must be three weights >= 0 "
                              "(background, foreground, global)")
        if len(self.mesh) != 3:
            raise ConfigError(f"train config: mesh={self.mesh!r} must be (data, fsdp, layer)")
        if not isinstance(self.dreamlayer, dict):
            raise ConfigError(f"train config: dreamlayer={self.dreamlayer!r} must be a dict of "
                              "DreamLayerConfig fields, e.g. {'lora_rank': 16}")
        from dreamlayer_jax.models.layer_unet import DreamLayerConfig

        unknown = sorted(set(self.dreamlayer) - set(DreamLayerConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"train config: dreamlayer has unknown keys {unknown}")
        if self.max_layers and self.max_layers < 3:
            raise ConfigError(f"train config: max_layers={self.max_layers} must be >= 3")
        if min(self.context_loss_weight, self.layout_loss_weight) < 0:
            raise ConfigError("train config: context_loss_weight and layout_loss_weight "
                              "must be >= 0")
        if self.curriculum:
            from dreamlayer_jax.data.curriculum import check_curriculum

            check_curriculum(self.curriculum)  # the limits are checked against L_max later
        if self.sample_scheduler:
            from dreamlayer_jax.schedulers.config import resolve_kind

            resolve_kind(self.sample_scheduler)  # ConfigError on an unknown name

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """`value` in the type of the field's default (tuples stay tuples, ints ints)."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if name == "curriculum":
            return value  # TrainConfig.__post_init__ makes it pairs of ints
        if isinstance(default, tuple):
            return tuple(type(d)(v) for d, v in zip(default, value, strict=True))
        if isinstance(default, int | float | str):
            return type(default)(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"train config: {name}={value!r} is not a valid "
                          f"{type(default).__name__}") from exc
    return value


def config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """A `TrainConfig` from a dict; unknown keys are errors (a typo must not pass)."""
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ConfigError(f"train config: unknown keys {unknown}")
    return TrainConfig(**{k: _coerce(k, v, defaults[k]) for k, v in values.items()})


def parse_overrides(pairs: Sequence[str | Sequence[str]]) -> dict[str, Any]:
    """`["key=value", ...]` -> dict; values are Python literals or plain strings. Items
    may be lists of pairs (`--set a=1 b=2 --set c=3`)."""
    out: dict[str, Any] = {}
    flat = [p for item in pairs for p in ([item] if isinstance(item, str) else item)]
    for pair in flat:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value pairs, got {pair!r}")
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw
    return out


def load_config_module(path: str | os.PathLike) -> Any:
    """A configs/*.py file as a module (configs/ is not a package; configs that build on
    another load it with this too); a ConfigError when missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_dreamlayer_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"config file {path} cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a broken config file is a user error
        raise ConfigError(f"config file {path} failed to load: {exc}") from exc
    return module


def config_file_values(path: str | os.PathLike) -> dict[str, Any]:
    """The fields `path`'s `get_config()` returns, as a dict."""
    module = load_config_module(path)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    base = module.get_config()
    return dataclasses.asdict(base) if isinstance(base, TrainConfig) else dict(base)


def load_config_file(path: str | os.PathLike,
                     overrides: Sequence[str | Sequence[str]] = ()) -> TrainConfig:
    """Run `path`'s `get_config()` and apply `key=value` overrides."""
    values = config_file_values(path)
    values.update(parse_overrides(overrides))
    return config_from_dict(values)


RUN_CONFIG = "config.json"  # a run's config, in its workdir


def save_run_config(cfg: TrainConfig, workdir: str | os.PathLike) -> Path:
    """Write `cfg` to `workdir/config.json` (what `--resume` starts from)."""
    path = Path(workdir) / RUN_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return path


def load_run_config(workdir: str | os.PathLike,
                    overrides: Sequence[str | Sequence[str]] = ()) -> TrainConfig | None:
    """The config saved in `workdir` with `overrides` applied; None if none is saved."""
    path = Path(workdir) / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}); pass --config") from None
    values.update(parse_overrides(overrides))
    return config_from_dict(values)


def show_config(cfg: TrainConfig) -> str:
    """Every field: its value, TrainConfig's default where the value differs, and its
    meaning (`train.py --show-config`)."""
    width = max(len(f.name) for f in dataclasses.fields(cfg))
    lines = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        note = "" if value == default else f"  (default {default!r})"
        lines.append(f"{f.name:<{width}}  {value!r}{note}")
        lines.append(f"{'':<{width}}    {FIELD_HELP.get(f.name, '')}")
    return "\n".join(lines)


def fit_mesh(mesh: Sequence[int], num_devices: int) -> tuple[tuple[int, int, int], str]:
    """`(data, fsdp, layer)` sizes for `num_devices`, and a note when they differ from
    `mesh`. A mesh with one -1 fits any count: each fixed axis shrinks to the largest
    divisor of it that divides what is left, and -1 takes the rest. A mesh without -1
    must use every device exactly; ConfigError says what to pass."""
    sizes = [int(s) for s in mesh]
    if len(sizes) != 3 or any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
        raise ConfigError(f"train config: mesh={tuple(mesh)!r} must be three sizes "
                          "(data, fsdp, layer), at most one of them -1")
    if -1 not in sizes:
        if math.prod(sizes) != num_devices:
            raise ConfigError(f"mesh {tuple(sizes)} needs {math.prod(sizes)} devices, this "
                              f"host has {num_devices}: pass --set mesh=-1,1,1 (or sizes "
                              f"whose product is {num_devices})")
        return (sizes[0], sizes[1], sizes[2]), ""
    left, fitted = num_devices, list(sizes)
    for i, size in enumerate(sizes):
        if size != -1:
            fitted[i] = math.gcd(size, left)
            left //= fitted[i]
    fitted[sizes.index(-1)] = left
    note = ""
    if fitted != [left if s == -1 else s for s in sizes]:
        note = (f"mesh {tuple(sizes)} does not fit {num_devices} device(s): using "
                f"{tuple(fitted)} (set another with --set mesh=DATA,FSDP,LAYER)")
    return (fitted[0], fitted[1], fitted[2]), note

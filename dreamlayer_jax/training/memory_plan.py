"""Per-device memory of a DreamLayer train step, planned before any accelerator is used.

Two parts, added per device:

- the train state, exact from shapes (`jax.eval_shape`, no weights are made): float32
  parameters, Adam's two moments and the EMA over the trained leaves only (a frozen
  leaf has an empty `optax.MaskedNode` in both, `train_params` decides), laid out by
  `parallel.rules` (fsdp over the largest divisible axis); the gradients (float32, the
  trained leaves, sharded like them); the frozen text encoders (replicated);
- the step's temporaries (activations kept for the backward pass, the bf16 copy of the
  weights, XLA's scratch) from `compiled.memory_analysis().temp_size_in_bytes` of the
  real train step (`training.step`) compiled on CPU devices at a small size. Compiling
  an SD1.5 or SDXL step at 512 or 1024 px is too slow on a CPU, so the temporaries are
  measured at two small sizes and extrapolated linearly in `units = batch x layers x
  latent pixels` per device: `temp(u) = fixed + per_unit * u` (`fit_temporaries`); a
  third compiled size checks the fit (`TempFit.check`). This is an estimate: XLA's
  fusion and rematerialisation choices at the large size can differ from the small ones,
  and a 1-device compile holds the whole bf16 weight copy (an fsdp run may gather it
  layer by layer: less).

Latents are the step's input (pixel codec without unshuffling: the latent grid of the
picture); a VAE encoder in the step (latent codec) adds its own temporaries, not counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dreamlayer_jax.io.torch_to_nnx import ShapeOnlyRngs
from dreamlayer_jax.models.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
from dreamlayer_jax.models.layer_unet import DreamLayerConfig, DreamLayerUNet
from dreamlayer_jax.models.unet import UNet2DConditionModel
from dreamlayer_jax.models.unet_config import UNetConfig
from dreamlayer_jax.parallel.rules import param_spec
from dreamlayer_jax.training.config import TrainConfig
from dreamlayer_jax.training.optimizer import make_optimizer, trained_mask
from dreamlayer_jax.training.state import init_train_state

GIB = 2**30
DEVICE_MEMORY = {"v5e": 16 * GIB, "v5p": 95 * GIB, "h100": 80 * GIB, "h200": 141 * GIB}

SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
             "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


@dataclass(frozen=True)
class ModelSpec:
    """A model by its configs: the base UNet (diffusers keys), the DreamLayer fields and
    the text encoders (CLIP configs; two for SDXL, the second with `projection_dim`)."""

    unet: Mapping[str, Any]
    dreamlayer: Mapping[str, Any]
    text: tuple[Mapping[str, Any], ...]
    tokens: int = 77


def abstract_unet(spec: ModelSpec) -> Any:
    """The DreamLayer UNet's parameters as `ShapeDtypeStruct`s (nnx pure dict)."""
    def build() -> DreamLayerUNet:
        rngs = ShapeOnlyRngs()  # nnx.Rngs is quadratic under eval_shape (SDXL: minutes)
        base = UNet2DConditionModel(UNetConfig.from_dict(dict(spec.unet)), rngs=rngs)
        return DreamLayerUNet(base, DreamLayerConfig.from_dict(dict(spec.dreamlayer)),
                              rngs=rngs)

    model = nnx.eval_shape(build)
    return nnx.split(model)


def abstract_text(spec: ModelSpec) -> list[tuple[nnx.GraphDef, Any]]:
    """`(graphdef, abstract params)` of each text encoder."""
    out = []
    for i, config in enumerate(spec.text):
        cls = CLIPTextModelWithProjection if i == 1 else CLIPTextModel
        text_config = CLIPTextConfig.from_dict(dict(config))
        graph, state = nnx.split(nnx.eval_shape(lambda c=text_config, k=cls: k(
            c, rngs=ShapeOnlyRngs())))
        out.append((graph, nnx.to_pure_dict(state)))
    return out


def _nbytes(x: Any) -> int:
    return int(math.prod(x.shape)) * jnp.dtype(x.dtype).itemsize


def sharded_bytes(tree: Any, fsdp: int) -> int:
    """Bytes per device of `tree`'s leaves laid out by `parallel.rules.param_spec`."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        spec = param_spec(leaf.shape, fsdp)
        total += _nbytes(leaf) // (fsdp if any(a is not None for a in spec) else 1)
    return total


@dataclass(frozen=True)
class StateBytes:
    """Per-device bytes of the parts of the train state that do not depend on the batch."""

    params: int
    grads: int
    adam: int
    ema: int
    text: int
    param_count: int
    trained_count: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.adam + self.ema + self.text


def state_bytes(spec: ModelSpec, train_params: str, fsdp: int = 1) -> StateBytes:
    """Exact per-device bytes from `eval_shape` of `init_train_state` (as the trainer
    builds it) for a mesh whose fsdp axis has `fsdp` devices."""
    return state_bytes_for(spec, train_params, (fsdp,))[fsdp]


def state_bytes_for(spec: ModelSpec, train_params: str,
                    fsdps: tuple[int, ...]) -> dict[int, StateBytes]:
    """`state_bytes` for several fsdp sizes, the abstract state built once."""
    _, unet_state = abstract_unet(spec)
    params = nnx.to_pure_dict(unet_state)
    cfg = TrainConfig(model="planned", train_params=train_params)
    tx = make_optimizer(cfg, params)
    mask = trained_mask(params, train_params)
    state = jax.eval_shape(lambda p: init_train_state(p, tx, 0, mask), params)
    trained = [p for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask),
                                 strict=True) if m]
    text = sum(_nbytes(x) for _, p in abstract_text(spec) for x in jax.tree.leaves(p))
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    return {n: StateBytes(
        params=sharded_bytes(state.params, n), grads=sharded_bytes(trained, n),
        adam=sharded_bytes(state.opt_state, n), ema=sharded_bytes(state.ema, n), text=text,
        param_count=count, trained_count=sum(math.prod(x.shape) for x in trained))
        for n in fsdps}


def _build(spec: ModelSpec, train_params: str, batch: int, layers: int, latent: int,
           mesh: Any, compute_dtype: str) -> dict[str, Any]:
    """The real train step's pieces (`training.step`) on abstract inputs."""
    from dreamlayer_jax.attention.backends import resolve_backend
    from dreamlayer_jax.codecs.pixel import PixelCodec
    from dreamlayer_jax.schedulers.factory import scheduler_from_config
    from dreamlayer_jax.training.step import batch_keys, make_loss_fn, make_train_step

    dl = {**spec.dreamlayer, "max_layers": layers, "codec": "pixel", "resolution": latent}
    spec = ModelSpec(spec.unet, dl, spec.text, spec.tokens)
    graph, unet_state = abstract_unet(spec)
    params = nnx.to_pure_dict(unet_state)
    texts = abstract_text(spec)
    cfg = TrainConfig(model="planned", train_params=train_params, batch_size=batch,
                      max_layers=layers, compute_dtype=compute_dtype)
    tx = make_optimizer(cfg, params)
    dl_config = DreamLayerConfig.from_dict(dl)
    special = [(1, 1)] * len(texts) if dl_config.variant == "paper" else None
    loss_fn = make_loss_fn(cfg, graph, tuple(g for g, _ in texts), PixelCodec(1),
                           scheduler_from_config(dict(SCHEDULER)), float(dl_config.box_margin),
                           resolve_backend("xla"), None, special, mesh=mesh)
    mask = trained_mask(params, train_params)
    shapes = {"pixels": ((batch, layers, latent, latent, 4), jnp.float32),
              "layer_valid": ((batch, layers), jnp.bool_),
              "boxes": ((batch, layers, 4), jnp.float32),
              "token_ids": ((batch, layers, spec.tokens), jnp.int32),
              "token_ids_2": ((batch, layers, spec.tokens), jnp.int32)}
    return {"step": make_train_step(cfg, tx, loss_fn, params), "loss_fn": loss_fn,
            "params": params, "mask": mask, "text_params": [p for _, p in texts],
            "state": jax.eval_shape(lambda p: init_train_state(p, tx, 0, mask), params),
            "batch": {k: jax.ShapeDtypeStruct(*shapes[k]) for k in batch_keys(len(texts))}}


def compile_step(spec: ModelSpec, train_params: str, batch: int, layers: int, latent: int,
                 mesh: Any, compute_dtype: str = "bfloat16") -> Any:
    """The real train step (`training.step`) compiled for `mesh` on abstract inputs: a
    `Compiled` whose `memory_analysis()` is per device."""
    from dreamlayer_jax.training.step import jit_train_step

    parts = _build(spec, train_params, batch, layers, latent, mesh, compute_dtype)
    fn = jit_train_step(parts["step"], mesh, parts["state"], parts["text_params"])
    return fn.lower(parts["state"], parts["text_params"], parts["batch"]).compile()


def _is_score(why: str, shape: tuple[int, ...]) -> bool:
    """A residual of the xla attention's scores in attention/softmax.py: `exp` and its
    bf16 copy, or, when the queries run in chunks (`lax.map`), the scan's outputs whose
    last axis is the keys (>= 256: head sizes are smaller). Flash attention (cudnn,
    splash) keeps none of these."""
    if "attention/softmax.py" not in why:
        return False
    if "output of scan " in why and "(_over_query_chunks)" in why:
        return len(shape) >= 2 and shape[-1] >= 256
    return "output of exp " in why or ("convert_element_type" in why and "(_weighted)" in why)


def residual_split(spec: ModelSpec, train_params: str, batch: int, layers: int, latent: int,
                   compute_dtype: str = "bfloat16") -> dict[str, int]:
    """Bytes the loss's forward pass keeps for the backward pass (`saved_residuals` of
    the traced gradient, no compile; arguments excluded): `total` (activations and the
    bf16 copy of the weights, before XLA's fusion and rematerialisation) and `scores`,
    the part that is the xla attention's scores (`total - scores`: flash attention)."""
    from jax._src.ad_checkpoint import saved_residuals

    parts = _build(frozen_text_trimmed(spec), train_params, batch, layers, latent, None,
                   compute_dtype)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)

    def loss(params, text_params, batch, key):
        return parts["loss_fn"](params, text_params, batch, key)[0]

    found = [(aval, why) for aval, why in saved_residuals(
        loss, parts["params"], parts["text_params"], parts["batch"], key)
        if not why.startswith("from the argument") and hasattr(aval, "shape")]
    return {"total": sum(_nbytes(a) for a, _ in found),
            "scores": sum(_nbytes(a) for a, why in found if _is_score(why, a.shape))}


def frozen_text_trimmed(spec: ModelSpec) -> ModelSpec:
    """`spec` with text encoders of at most 2 layers: they run under `stop_gradient`, so
    they keep no residuals, and their output (also the penultimate layer's) keeps its
    shape; tracing them whole only costs time (CLIP-bigG: 32 layers)."""
    text = tuple({**t, "num_hidden_layers": min(int(t.get("num_hidden_layers", 12)), 2)}
                 for t in spec.text)
    return ModelSpec(spec.unet, spec.dreamlayer, text, spec.tokens)


def transformer_counts(unet: Mapping[str, Any]) -> tuple[int, ...]:
    """Transformer layers at each level `i` of the UNet: down block `i`, the up block
    mirroring it and, at the last level, the mid block. Every layer of a level has the
    same shapes (channels, tokens, heads), so what it keeps for the backward pass is the
    same: the residuals are affine in these counts."""
    c = UNetConfig.from_dict(dict(unet))
    n = c.num_blocks
    counts = [0] * n
    for i in range(n):
        if "CrossAttn" in c.down_block_types[i]:
            counts[i] += sum(c.down_transformer_layers(i))
        if "CrossAttn" in c.up_block_types[i]:
            counts[n - 1 - i] += sum(c.up_transformer_layers(i))
    if "CrossAttn" in c.mid_block_type:
        counts[n - 1] += c.mid_transformer_layers
    return tuple(counts)


def depth_variants(unet: Mapping[str, Any]) -> list[tuple[dict[str, Any], float]]:
    """The shallow UNets `residual_split_by_depth` traces, with their weight: first every
    transformer 1 layer deep (weight 1), then, for each level deeper than that in `unet`,
    the same with that level's transformers 2 deep (weight: the level's extra layers over
    the base, per extra layer the variant adds)."""
    base = {**unet, "transformer_layers_per_block": 1,
            "reverse_transformer_layers_per_block": None}
    n = len(unet["block_out_channels"])
    target, shallow = transformer_counts(unet), transformer_counts(base)
    out: list[tuple[dict[str, Any], float]] = [(base, 1.0)]
    for level in range(n):
        if target[level] == shallow[level]:
            continue
        deeper = {**base, "transformer_layers_per_block": [2 if i == level else 1
                                                           for i in range(n)]}
        added = transformer_counts(deeper)[level] - shallow[level]
        out.append((deeper, (target[level] - shallow[level]) / added))
    return out


def residual_split_by_depth(spec: ModelSpec, train_params: str, batch: int, layers: int,
                            latent: int, compute_dtype: str = "bfloat16",
                            trace: Any = None) -> dict[str, int]:
    """`residual_split` of `spec`, from shallow traces extrapolated linearly in the
    transformer depth of each level (`depth_variants`): `R = R(base) + sum_level w *
    (R(level 2 deep) - R(base))`. Exact where every transformer is 1 deep (one trace:
    SD1.5); for SDXL (depths 1, 2, 10: 70 transformer layers) 3 traces of 11-15 layers
    instead of one of 70. `trace`: the function traced (default `residual_split`)."""
    trace = trace or residual_split
    variants = depth_variants(spec.unet)

    def split(unet: Mapping[str, Any]) -> dict[str, int]:
        return trace(ModelSpec(unet, spec.dreamlayer, spec.text, spec.tokens), train_params,
                     batch, layers, latent, compute_dtype)

    base = split(variants[0][0])
    out = {k: float(v) for k, v in base.items()}
    for unet, weight in variants[1:]:
        deeper = split(unet)
        for k in out:
            out[k] += weight * (deeper[k] - base[k])
    return {k: round(v) for k, v in out.items()}


def residual_bytes(spec: ModelSpec, train_params: str, batch: int, layers: int, latent: int,
                   compute_dtype: str = "bfloat16") -> int:
    """`residual_split(...)["total"]`."""
    return residual_split(spec, train_params, batch, layers, latent, compute_dtype)["total"]


def compiled_bytes(compiled: Any) -> dict[str, int]:
    """`memory_analysis()` per device: arguments, outputs, aliased, temporaries, total
    (arguments + outputs + temporaries - aliased: what the step holds at its peak)."""
    m = compiled.memory_analysis()
    out = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
           "aliased": int(m.alias_size_in_bytes), "temporaries": int(m.temp_size_in_bytes)}
    out["total"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
    return out


def units(batch_per_device: float, layers: int, latent: int) -> float:
    """What activations scale with: UNet images x latent pixels, per device."""
    return batch_per_device * layers * latent * latent


@dataclass(frozen=True)
class TempFit:
    """`temp(u) = fixed + per_unit * u` bytes per device, fit through two compiled sizes."""

    fixed: float
    per_unit: float
    points: tuple[tuple[float, int], ...]

    def __call__(self, u: float) -> float:
        return self.fixed + self.per_unit * u

    def check(self, u: float, measured: int) -> float:
        """Relative error of the fit at a size it was not fit on."""
        return (self(u) - measured) / max(measured, 1)


def fit_temporaries(points: list[tuple[float, int]]) -> TempFit:
    """The line through two `(units, temp bytes)` points (least squares if more)."""
    u = np.array([p[0] for p in points], float)
    t = np.array([p[1] for p in points], float)
    per_unit, fixed = np.polyfit(u, t, 1)
    return TempFit(float(fixed), float(per_unit), tuple(points))


@dataclass(frozen=True)
class Plan:
    """Per-device bytes of one configuration."""

    state: StateBytes
    batch_bytes: int
    temporaries: float

    @property
    def total(self) -> float:
        return self.state.total + self.batch_bytes + self.temporaries


def batch_input_bytes(batch_per_device: float, layers: int, latent: int, tokens: int,
                      num_text: int) -> int:
    per_scene = layers * (latent * latent * 4 * 4 + 1 + 16 + tokens * 4 * num_text)
    return int(batch_per_device * per_scene)


def plan(spec: ModelSpec, fit: TempFit, state: StateBytes, batch_per_device: float,
         layers: int, latent: int) -> Plan:
    return Plan(state, batch_input_bytes(batch_per_device, layers, latent, spec.tokens,
                                         len(spec.text)),
                fit(units(batch_per_device, layers, latent)))


def largest_batch(spec: ModelSpec, fit: TempFit, state: StateBytes, layers: int, latent: int,
                  capacity: int, usable: float = 0.9, limit: int = 4096) -> int:
    """The largest whole batch per device that fits in `usable` of `capacity`; 0: none."""
    best = 0
    for b in range(1, limit + 1):
        if plan(spec, fit, state, b, layers, latent).total > usable * capacity:
            break
        best = b
    return best

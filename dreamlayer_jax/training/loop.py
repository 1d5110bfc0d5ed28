"""The trainer: data -> sharded steps -> logs, samples, checkpoints -> an exported model.

    trainer = Trainer(cfg, workdir)         # loads the base model, data, mesh, optimiser
    trainer.run(resume=True)                # trains to cfg.num_steps; returns the history
    trainer.export(folder)                  # EMA weights as a loadable model folder

Nothing is lost silently: a workdir that holds a run (checkpoints or an export) is
refused unless the run resumes it or `overwrite=True` clears it (`check_workdir`); a
resumed run says from which step; the config is saved as `workdir/config.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from dreamlayer_jax.attention.backends import resolve_backend
from dreamlayer_jax.data.curriculum import check_curriculum
from dreamlayer_jax.data.input_pipeline import make_train_iterator
from dreamlayer_jax.errors import ConfigError, NumericalError
from dreamlayer_jax.io import resolve_model_folder
from dreamlayer_jax.parallel.mesh import make_mesh
from dreamlayer_jax.pipeline.components import DREAMLAYER, save_dreamlayer_unet
from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline
from dreamlayer_jax.pipeline.text_conditioning import TextConditioner
from dreamlayer_jax.training.checkpoint import Checkpointer, abstract_like
from dreamlayer_jax.training.config import TrainConfig, fit_mesh, save_run_config
from dreamlayer_jax.training.latent_cache import cached_arrays, cached_batch_keys, open_cache
from dreamlayer_jax.training.logging import MetricsLogger
from dreamlayer_jax.training.optimizer import make_optimizer, trained_mask
from dreamlayer_jax.training.sources import eval_scenes, load_train_source
from dreamlayer_jax.training.state import TrainState, ema_weights, init_train_state
from dreamlayer_jax.training.step import (
    TEXT_ENCODERS,
    UNET,
    batch_keys,
    host_arrays,
    jit_train_step,
    joint_params,
    make_loss_fn,
    make_train_step,
    place_batch,
    state_shardings,
)
from dreamlayer_jax.training.throughput import StepMeter, format_throughput
from dreamlayer_jax.training.transparency import (
    make_transparency_loss_fn,
    save_transparency,
    start_path,
    trained_module,
    transparency_codec,
)

COPIED_PARTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler",
                "vae", "transparency_decoder", "model_index.json")
TEXT_PARTS = ("text_encoder", "text_encoder_2")  # the conditioner's encoders, in order


class Trainer:
    """One training run in `workdir` (checkpoints/, tensorboard/, samples/, export/)."""

    def __init__(self, cfg: TrainConfig, workdir: str | os.PathLike, *,
                 mesh: Mesh | None = None,
                 on_checkpoint: Callable[[int], None] | None = None,
                 progress_stream: Any = None) -> None:
        if not cfg.model:
            raise ConfigError("train config: model (the base model folder) is required")
        self.cfg, self.workdir = cfg, Path(workdir)
        self.on_checkpoint = on_checkpoint  # called with the step once a save is complete
        self.progress_stream = progress_stream  # the progress bar's stream (default stderr)
        self.base_folder = resolve_model_folder(cfg.model)
        self.pipe = DreamLayerPipeline.from_pretrained(self.base_folder,
                                                       dreamlayer=cfg.dreamlayer,
                                                       transparency=start_path(cfg))
        self._check_conditioning()
        self.max_layers = cfg.max_layers or self.pipe.config.max_layers
        if mesh is None:
            sizes, note = fit_mesh(cfg.mesh, jax.device_count())
            if note:
                self.say(note, warning=True)
            mesh = make_mesh(*sizes)
        self.mesh = mesh
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if cfg.batch_size % shards or cfg.batch_size % jax.process_count():
            raise ConfigError(f"batch_size={cfg.batch_size} must divide by data*fsdp={shards} "
                              f"and by the {jax.process_count()} processes")
        if cfg.slot_buckets and self.mesh.shape["layer"] > 1:
            raise ConfigError("slot_buckets vary the layer count per batch: the mesh's "
                              f"layer axis must be 1, got {self.mesh.shape['layer']}")
        if self.max_layers % self.mesh.shape["layer"]:
            raise ConfigError(f"max_layers={self.max_layers} must divide by the mesh's layer "
                              f"axis ({self.mesh.shape['layer']})")
        if cfg.curriculum:
            check_curriculum(cfg.curriculum, self.max_layers)
        # a latent cache replaces the scenes, and the step skips codec and text encoders
        self.cache = open_cache(cfg, self.pipe, self.max_layers) if cfg.data_cache else None
        self.source = (self.cache if self.cache is not None
                       else load_train_source(cfg, self.max_layers))

        # the trained module: the DreamLayerUNet, or the codec's transparency decoder
        if cfg.mode == "transparency":
            self.transparency_codec = transparency_codec(self.pipe.codec, cfg)
            self.model_graph, params = nnx.split(trained_module(self.transparency_codec))
            loss_fn = make_transparency_loss_fn(self.model_graph, self.transparency_codec)
        else:
            self.model_graph, params = nnx.split(self.pipe.unet)
        conditioner = self.pipe.conditioner
        params = nnx.to_pure_dict(params)
        text_params = ([] if self.cache is not None else
                       [nnx.to_pure_dict(p) for p in conditioner.params])
        if cfg.train_text_encoder:  # the encoders join the trained tree
            params, text_params = joint_params(params, text_params), []
        self.tx = make_optimizer(cfg, params)
        if cfg.mode == "diffusion":
            backend = resolve_backend(cfg.attention_backend
                                      or self.pipe.config.attention_backend)
            empty_ids = None
            if conditioner.is_sdxl and conditioner.force_zeros_for_empty_prompt:
                empty_ids = conditioner.tokenize([""])[0][0]
            # the paper variant rebuilds the global prompt from the layers' token ids
            special_ids = (conditioner.special_ids() if self.pipe.config.variant == "paper"
                           else None)
            loss_fn = make_loss_fn(cfg, self.model_graph, conditioner.graphdefs,
                                   self.pipe.codec, self.pipe.scheduler,
                                   self.pipe.config.box_margin, backend, empty_ids,
                                   special_ids, mesh=self.mesh, cached=self.cache is not None,
                                   train_text=cfg.train_text_encoder)
        # The state is never built whole on one device: its shapes come from eval_shape,
        # and `initial_state` creates it already sharded from these host weights.
        self._host_params = jax.tree.map(np.asarray, params)
        self.abstract_state = jax.eval_shape(self._init_fn, params)
        self.text_params = jax.device_put(text_params)
        self.train_step = make_train_step(cfg, self.tx, loss_fn, params)
        self.step_fn = self.jit_step(self.mesh)
        self.history: list[tuple[int, float]] = []

    def say(self, message: str, warning: bool = False) -> None:
        """One line for the user (process 0): on stdout, a warning on the progress bar's
        stream (the terminal's stderr)."""
        if jax.process_index() == 0:
            stream = (self.progress_stream or sys.stderr) if warning else sys.stdout
            print(f"warning: {message}" if warning else message, file=stream, flush=True)

    def _check_conditioning(self) -> None:
        """The base UNet's added conditioning must be what the text encoders give."""
        kind = self.pipe.unet.unet.config.addition_embed_type
        sdxl = self.pipe.conditioner.is_sdxl
        if kind not in (None, "text_time") or (kind == "text_time") != sdxl:
            raise ConfigError(
                f"{self.cfg.model}: the UNet's addition_embed_type={kind!r} does not match "
                f"its {'two' if sdxl else 'one'} text encoder(s); the trainer supports SD "
                "1.x / 2.x (one encoder, none) and SDXL (two encoders, 'text_time')")

    def jit_step(self, mesh: Mesh, donate: bool = True):
        """The train step jitted for `mesh` (the trainer's own: `self.step_fn`)."""
        keys = (cached_batch_keys(self.cache) if self.cache is not None
                else batch_keys(len(self.pipe.conditioner.graphdefs)))
        return jit_train_step(self.train_step, mesh, self.abstract_state, self.text_params,
                              donate, keys)

    # -- data ------------------------------------------------------------------------
    def make_iterator(self):
        return make_train_iterator(
            self.source, batch_size=self.cfg.batch_size // jax.process_count(),
            max_layers=self.max_layers, seed=self.cfg.seed, flip_prob=self.cfg.flip_prob,
            prompt_dropout=self.cfg.prompt_dropout, curriculum=self.cfg.curriculum,
            slot_buckets=self.cfg.slot_buckets)

    def host_arrays(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """A `TrainBatch` as arrays, prompts tokenized to `token_ids[B, L, T]`; a cached
        batch's arrays as they are."""
        if self.cache is not None:
            return cached_arrays(batch, cached_batch_keys(self.cache))
        return host_arrays(self.pipe.conditioner, batch)

    def device_batch(self, batch: dict[str, Any]) -> dict[str, jax.Array]:
        return place_batch(self.host_arrays(batch), self.mesh)

    # -- state -----------------------------------------------------------------------
    def _init_fn(self, params: Any) -> TrainState:
        return init_train_state(params, self.tx, self.cfg.seed,
                                trained_mask(params, self.cfg.train_params))

    def initial_state(self, mesh: Mesh | None = None) -> TrainState:
        """The fresh state laid out on `mesh` (default: the trainer's): each process puts
        its shards of the weights on its devices, and one jitted call derives the
        optimiser state and EMA in place, sharded like the weights (multi-host safe)."""
        shardings = state_shardings(self.mesh if mesh is None else mesh, self.abstract_state)
        params = jax.tree.map(lambda x, s: jax.make_array_from_callback(
            x.shape, s, lambda idx, x=x: x[idx]), self._host_params, shardings.params)
        return jax.jit(self._init_fn, in_shardings=(shardings.params,),
                       out_shardings=shardings)(params)

    def restore(self, ckpt: Checkpointer) -> tuple[TrainState, dict[str, Any], int]:
        target = abstract_like(self.abstract_state,
                               state_shardings(self.mesh, self.abstract_state))
        step, state, data_state, _ = ckpt.restore(target)
        return state, data_state, step

    # -- the loop --------------------------------------------------------------------
    def run(self, resume: bool = False, workdir: str | os.PathLike | None = None, *,
            overwrite: bool = False) -> list[tuple[int, float]]:
        """Train to `cfg.num_steps`; returns `[(step, loss), ...]` of the steps run here.

        `workdir` overrides the trainer's (one trainer, one compiled step, several runs).
        A workdir holding an earlier run is refused unless `resume` (continue it) or
        `overwrite` (delete its checkpoints, export, logs and samples first).
        """
        cfg = self.cfg
        if workdir is not None:
            self.workdir = Path(workdir)
        if jax.process_index() == 0:
            check_workdir(self.workdir, resume=resume, overwrite=overwrite)
        self.history = []
        ckpt = Checkpointer(self.workdir, keep=cfg.keep_checkpoints,
                            async_save=cfg.async_checkpoints)
        iterator = self.make_iterator()
        state, start = None, 0
        latest = ckpt.latest_step() if resume else None
        if latest is not None:
            state, data_state, start = self.restore(ckpt)
            iterator.set_state(data_state)
            self.say(f"resumed from step {start} ({ckpt.directory})")
        elif resume:
            self.say(f"no checkpoint in {ckpt.directory}: starting from step 0")
        if state is None:
            state = self.initial_state()
        if jax.process_index() == 0:  # once the state is there (a failed restore writes nothing)
            save_run_config(cfg, self.workdir)
        logger = MetricsLogger(self.workdir, enabled=jax.process_index() == 0)
        bar = logger.progress(start, cfg.num_steps, enabled=cfg.progress,
                              stream=self.progress_stream)
        meter = None
        try:
            for step in range(start, cfg.num_steps):
                batch = self.device_batch(next(iterator))
                args = (state, self.text_params, batch)
                if meter is None:  # compiles the step and counts its FLOPs, once
                    meter = StepMeter(self.step_fn, args, cfg.batch_size,
                                      self.mesh.devices.flat, start)
                meter.add(args)  # a batch of a new shape (slot buckets) is counted too
                state, metrics = self.step_fn(state, self.text_params, batch)
                metrics = jax.device_get(metrics)
                self.history.append((step + 1, float(metrics["loss"])))
                bar.update(1)
                if int(metrics["nonfinite"]) >= cfg.max_nonfinite:
                    raise NumericalError(
                        f"{int(metrics['nonfinite'])} consecutive steps had a non-finite loss "
                        f"or gradient (last at step {step + 1}); stopping. The last good "
                        f"checkpoint in {ckpt.directory} is intact: lower the learning rate "
                        f"or use float32")
                edge = step == start or step + 1 == cfg.num_steps  # first and last
                if (step + 1) % cfg.log_every == 0 or edge:
                    numbers = meter.lap(step + 1)  # s/step, examples/s, TFLOP/s, MFU
                    metrics.update(numbers)
                    logger.scalars(step + 1, metrics)
                    self.say(format_throughput(step + 1, float(metrics["loss"]), numbers))
                    bar.set_postfix(loss=f"{float(metrics['loss']):.4f}")
                if (cfg.sample_every and cfg.mode == "diffusion"
                        and ((step + 1) % cfg.sample_every == 0 or edge)):
                    self.write_samples(logger, step + 1, state)
                if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.num_steps:
                    if int(metrics["nonfinite"]) == 0:  # never save a skipped step's state
                        ckpt.save(step + 1, state, iterator.get_state(),
                                  {"loss": float(metrics["loss"])})
                    if self.on_checkpoint is not None:
                        ckpt.wait()
                        self.on_checkpoint(step + 1)
        finally:
            bar.close()
            ckpt.close()
            logger.close()
        self.state = state
        if cfg.export:
            self.export(self.workdir / "export", state)
        return self.history

    # -- outputs ---------------------------------------------------------------------
    def ema_parts(self, state: TrainState) -> tuple[Any, TextConditioner]:
        """The trained module (DreamLayerUNet, or the transparency decoder in mode
        "transparency") with the EMA weights, gathered to every process, and the text
        conditioner: the base model's, or with `train_text_encoder` the EMA encoders'."""
        ema = jax.tree.map(np.asarray, multihost_utils.process_allgather(state.ema, tiled=True))
        weights = ema_weights(ema, self._host_params)
        conditioner = self.pipe.conditioner
        if not self.cfg.train_text_encoder:
            return nnx.merge(self.model_graph, weights), conditioner
        encoders = [nnx.merge(g, p) for g, p in
                    zip(conditioner.graphdefs, weights[TEXT_ENCODERS], strict=True)]
        return nnx.merge(self.model_graph, weights[UNET]), TextConditioner(
            encoders, conditioner.tokenizers,
            force_zeros_for_empty_prompt=conditioner.force_zeros_for_empty_prompt)

    def export(self, folder: str | os.PathLike, state: TrainState) -> Path:
        """The EMA weights as a model folder `DreamLayerPipeline.from_pretrained` loads:
        the trained module written, every other part copied from the base model."""
        folder = Path(folder)
        model, conditioner = self.ema_parts(state)
        if jax.process_index() != 0:
            return folder
        copied = COPIED_PARTS
        if self.cfg.train_text_encoder:
            for part, encoder in zip(TEXT_PARTS, conditioner.encoders(), strict=False):
                encoder.save_pretrained(folder / part)
            copied = tuple(p for p in COPIED_PARTS if p not in TEXT_PARTS)
        if self.cfg.mode == "transparency":
            save_transparency(model, self.transparency_codec, folder / "transparency_decoder")
            copied = (*(p for p in COPIED_PARTS if p != "transparency_decoder"),
                      "unet", DREAMLAYER)
        else:
            save_dreamlayer_unet(model, folder)
        for part in copied:
            src = self.base_folder / part
            if src.is_dir():
                shutil.copytree(src, folder / part, dirs_exist_ok=True)
            elif src.is_file():
                shutil.copy2(src, folder / part)
        self._export_prediction_type(folder / "scheduler" / "scheduler_config.json")
        return folder

    def _export_prediction_type(self, path: Path) -> None:
        """The exported scheduler predicts what the UNet was trained to predict (the
        config's `prediction_type` may override the base model's)."""
        if not self.cfg.prediction_type or not path.is_file():
            return
        config = json.loads(path.read_text())
        if config.get("prediction_type") != self.cfg.prediction_type:
            config["prediction_type"] = self.cfg.prediction_type
            path.write_text(json.dumps(config, indent=2) + "\n")

    def write_samples(self, logger: MetricsLogger, step: int, state: TrainState) -> None:
        """Sample the fixed eval scenes with the EMA weights; a PNG grid + TensorBoard."""
        model, conditioner = self.ema_parts(state)
        pipe = DreamLayerPipeline(model, conditioner, self.pipe.codec, self.pipe.scheduler)
        count = min(self.cfg.eval_scenes, len(self.source))
        scenes = eval_scenes(self.source, self.max_layers, count,
                             boxes=self.pipe.config.variant != "paper")
        results = pipe(scenes, num_inference_steps=self.cfg.sample_steps,
                       seed=list(range(len(scenes))),
                       scheduler=self.cfg.sample_scheduler or None)
        logger.sample_grid(step, results)


RUN_PARTS = ("checkpoints", "export", "tensorboard", "samples", "config.json")


def check_workdir(workdir: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Refuse to start a fresh run over an earlier one (one line, `ConfigError`) unless
    `overwrite`, which deletes the earlier run's parts (`RUN_PARTS`; train.log is kept)."""
    workdir, ckpts = Path(workdir), Path(workdir) / "checkpoints"
    if resume and not overwrite:
        return
    if overwrite:
        if resume:
            raise ConfigError("--resume and --overwrite contradict each other: pick one")
        for part in RUN_PARTS:
            path = workdir / part
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return
    steps = sorted(int(p.name) for p in ckpts.glob("[0-9]*") if p.name.isdigit())
    if steps or (workdir / "export").exists():
        held = f"checkpoints up to step {steps[-1]}" if steps else "an exported model"
        raise ConfigError(f"{workdir} holds an earlier run ({held}): pass --resume to "
                          "continue it, --overwrite to delete it and start over, or "
                          "another --workdir")

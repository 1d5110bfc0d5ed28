"""Where a training run's scenes come from: its generated synthetic scenes or a built
dataset (`data_dir`), and the fixed scenes its sample grids draw.

    source = load_train_source(cfg, max_layers)    # a random-access source of examples
    scenes = eval_scenes(source, max_layers, 4)     # pipeline `Scene`s for sample grids

The trainer (`training.loop`) and the latent cache writer (`training.latent_cache`)
both read scenes through `load_train_source`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dreamlayer_jax.data.input_pipeline import make_eval_scenes
from dreamlayer_jax.data.scene_example import scene_to_example
from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator
from dreamlayer_jax.errors import DataError, DreamLayerError
from dreamlayer_jax.training.config import TrainConfig


def synthetic_source(cfg: TrainConfig, max_layers: int) -> list[dict[str, Any]]:
    """An in-memory source of `cfg.synthetic_scenes` generated scenes (no dataset needed)."""
    gen = SyntheticSceneGenerator(resolution=cfg.synthetic_resolution,
                                  max_foregrounds=max_layers - 2)
    return [scene_to_example(gen.sample((cfg.seed, i)), f"synthetic-{i}")
            for i in range(cfg.synthetic_scenes)]


def dataset_folder(data_dir: str | os.PathLike) -> Path:
    """The versioned dataset folder (`.../dreamlayer_scenes/<config>/<version>`) of
    `data_dir`, which may be that folder or any folder above it holding one dataset
    (the TFDS root `dreamlayer-build-dataset --out` wrote)."""
    folder = Path(data_dir)
    if not folder.exists():
        raise DataError(f"dataset folder {data_dir} does not exist")
    if (folder / "dataset_info.json").is_file():
        return folder
    found = sorted(p.parent for p in folder.glob("**/dataset_info.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{data_dir} holds no built dataset (no dataset_info.json below "
                        "it); build one with dreamlayer-build-dataset")
    raise DataError(f"{data_dir} holds {len(found)} datasets; set data_dir to one of them: "
                    + ", ".join(str(p) for p in found[:4]))


def load_train_source(cfg: TrainConfig, max_layers: int) -> Any:
    """`cfg`'s training scenes: its synthetic ones without `data_dir`, else that dataset's
    `cfg.split` (a random-access source of examples)."""
    if not cfg.data_dir:
        return synthetic_source(cfg, max_layers)
    folder = dataset_folder(cfg.data_dir)
    from dreamlayer_jax.data.tfds_builder import load_source

    try:
        return load_source(folder, cfg.split)
    except DreamLayerError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read dataset {cfg.data_dir} ({cfg.split}): {exc}") from exc


def eval_scenes(source: Any, max_layers: int, count: int, boxes: bool = True) -> list[Any]:
    """The first `count` scenes of `source` as pipeline `Scene`s (fixed eval prompts);
    `boxes=False` asks for the foregrounds without their boxes (the paper variant)."""
    from dreamlayer_jax.pipeline.scene import Layer, Scene

    batch = make_eval_scenes(source, max_layers=max_layers, count=count)
    scenes = []
    for prompts, valid, box in zip(batch["prompts"], batch["layer_valid"], batch["boxes"],
                                   strict=True):
        fg = [Layer(prompts[i], tuple(float(v) for v in box[i]) if boxes else None)
              for i in range(1, max_layers - 1) if valid[i]]
        scenes.append(Scene(prompt=prompts[-1], background=prompts[0], layers=tuple(fg)))
    return scenes

"""The `dreamlayer_scenes` TFDS builder: scenes as `array_record` files, read without TF.

Two configs:

- `"synthetic"`: `SyntheticSceneGenerator` scenes. Train scene `i` is
  `sample((seed, 0, i))`, eval scene `i` is `sample((seed, 1, i))` (separate streams).
- `"folder"`: scene folders under `root` (and `eval_root` for an eval split). Unreadable
  folders (and, when `resolution` is given, folders of another size) are skipped; the
  count and reasons are logged and stored in the dataset's metadata.

    path = build_dataset("synthetic", "/data/tfds", num_train=1000, resolution=64)
    source = load_source(path, "train")      # a grain RandomAccessDataSource
    source[0]["layers"].shape                # (K, 64, 64, 4): SceneExample, numpy

Files follow tfds' layout: `data_dir/dreamlayer_scenes/<config>/1.0.0/` holding
`dreamlayer_scenes-<split>.array_record-0000N-of-0000M`, `dataset_info.json`,
`features.json` and `metadata.json` (build parameters and skip counts). Writing and
reading go through tfds' own `GeneratorBasedBuilder` / `as_data_source`, which use numpy
(no TensorFlow) when TF is not installed. Example order on disk is tfds' deterministic
shuffle of the example keys; `scene_id` identifies a scene.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, SupportsIndex

import numpy as np
import tensorflow_datasets as tfds

from dreamlayer_jax.data.scene import LayeredScene
from dreamlayer_jax.data.scene_example import (
    SceneExample,
    example_to_record,
    record_to_example,
    scene_to_example,
)
from dreamlayer_jax.data.scene_folder import read_scene_folder, scene_folder_paths
from dreamlayer_jax.data.skip_report import SkipReport
from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator
from dreamlayer_jax.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DATASET_NAME = "dreamlayer_scenes"
TRAIN, EVAL = "train", "eval"
_MAX_LISTED_SKIPS = 100  # skipped items listed in metadata.json (all are counted)


@dataclasses.dataclass(frozen=True)
class SyntheticParams:
    """Parameters of the `"synthetic"` config."""

    num_train: int = 1000
    num_eval: int = 64
    seed: int = 0
    resolution: int = 64
    max_foregrounds: int = 3
    min_foregrounds: int = 1

    def __post_init__(self) -> None:
        if self.num_train < 1 or self.num_eval < 0:
            raise ConfigError(
                f"need num_train >= 1 and num_eval >= 0, got {self.num_train}, {self.num_eval}"
            )
        SyntheticSceneGenerator(self.resolution, self.max_foregrounds, self.min_foregrounds)


@dataclasses.dataclass(frozen=True)
class FolderParams:
    """Parameters of the `"folder"` config: `root` (train) and optional `eval_root` hold
    scene folders; `resolution` (side in pixels) skips scenes of any other size."""

    root: str | None = None
    eval_root: str | None = None
    resolution: int | None = None

    def __post_init__(self) -> None:
        for name in ("root", "eval_root"):
            value = getattr(self, name)
            if value is not None:  # store absolute paths: they identify the build
                object.__setattr__(self, name, str(Path(value).expanduser().resolve()))
        if self.resolution is not None and int(self.resolution) < 1:
            raise ConfigError(f"resolution must be positive, got {self.resolution}")


_PARAMS = {"synthetic": SyntheticParams, "folder": FolderParams}


def make_params(config_name: str, params: Mapping[str, Any]) -> SyntheticParams | FolderParams:
    """The parameter dataclass of `config_name` from keyword values; ConfigError names
    an unknown config or parameter."""
    if config_name not in _PARAMS:
        raise ConfigError(f"unknown config {config_name!r}; choose one of {sorted(_PARAMS)}")
    cls = _PARAMS[config_name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"config {config_name!r}: unknown parameters {unknown}; known: {sorted(known)}"
        )
    return cls(**params)


def _params_json(params: SyntheticParams | FolderParams) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(params)))


def _features() -> tfds.features.FeaturesDict:
    # Several unknown dimensions need an encoding; zlib keeps uint8 pixels lossless.
    zlib = tfds.features.Encoding.ZLIB
    return tfds.features.FeaturesDict(
        {
            "scene_id": tfds.features.Text(),
            "prompt": tfds.features.Text(),
            "background_prompt": tfds.features.Text(),
            "background": tfds.features.Tensor(
                shape=(None, None, 3), dtype=np.uint8, encoding=zlib
            ),
            "layers": tfds.features.Tensor(
                shape=(None, None, None, 4), dtype=np.uint8, encoding=zlib
            ),
            "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "layer_prompts": tfds.features.Sequence(tfds.features.Text()),
            "num_foregrounds": tfds.features.Scalar(dtype=np.int32),
            "composite": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding=zlib),
            "meta": tfds.features.Text(),
        }
    )


class DreamlayerScenes(tfds.core.GeneratorBasedBuilder):
    """Layered scenes: background, stacked foregrounds `[K, H, W, 4]`, boxes, prompts,
    composite. Pass `params` (a `SyntheticParams` / `FolderParams`) to build; reading a
    prepared dataset needs none."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Background, stacked RGBA layers, boxes, prompts, composite."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="synthetic", description="Procedural synthetic scenes."),
        tfds.core.BuilderConfig(name="folder", description="Scene folders under a root."),
    ]
    # No downloads, so no checksums file: skip tfds' lookup of the code folder (which
    # fails for editable installs whose package is a namespace path).
    code_path = None

    def __init__(self, *, params: SyntheticParams | FolderParams | None = None, **kwargs: Any):
        config = kwargs.get("config")
        name = config if isinstance(config, str) else getattr(config, "name", "synthetic")
        if params is None:
            params = _PARAMS.get(name, SyntheticParams)()
        self._params = params
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="DreamLayer layered scenes (DESIGN.md section 5).",
            features=_features(),
            metadata=tfds.core.MetadataDict(params=_params_json(self._params), splits={}),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict]]]:
        del dl_manager  # nothing to download
        params = self._params
        if isinstance(params, SyntheticParams):
            splits = [TRAIN] + ([EVAL] if params.num_eval else [])
        elif params.root is None:
            raise ConfigError("config 'folder' needs root=<folder of scene folders>")
        else:
            splits = [TRAIN] + ([EVAL] if params.eval_root is not None else [])
        return {split: self._generate_examples(split) for split in splits}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
        """`(key, record)` pairs of `split`; its counts go to the metadata at the end."""
        params = self._params
        if isinstance(params, SyntheticParams):
            count = params.num_train if split == TRAIN else params.num_eval
            yield from self._generate_synthetic(split, 0 if split == TRAIN else 1, count)
        else:
            root = params.root if split == TRAIN else params.eval_root
            yield from self._generate_folders(split, root)

    def _record_split(self, split: str, report: SkipReport, stats: _SplitStats) -> None:
        self.info.metadata["splits"][split] = {
            "loaded": report.loaded,
            "skipped": report.num_skipped,
            "skipped_items": [
                {"path": item.path, "reason": item.reason}
                for item in report.skipped[:_MAX_LISTED_SKIPS]
            ],
            "max_foregrounds": stats.max_foregrounds,
            "sizes": sorted(stats.sizes),
        }
        level = logging.WARNING if report.num_skipped else logging.INFO
        logger.log(
            level, "%s/%s %s: %s", DATASET_NAME, self.builder_config.name, split, report.summary()
        )

    def _generate_synthetic(
        self, split: str, stream: int, count: int
    ) -> Iterator[tuple[str, dict]]:
        params = self._params
        generator = SyntheticSceneGenerator(
            params.resolution, params.max_foregrounds, params.min_foregrounds
        )
        report, stats = SkipReport(), _SplitStats()
        for index in range(count):
            scene_id = f"{split}/{index:06d}"
            scene = generator.sample((params.seed, stream, index))
            stats.add(scene)
            report.loaded += 1
            yield scene_id, example_to_record(scene_to_example(scene, scene_id))
        self._record_split(split, report, stats)

    def _generate_folders(self, split: str, root: str) -> Iterator[tuple[str, dict]]:
        size = self._params.resolution
        report, stats = SkipReport(), _SplitStats()
        for path in scene_folder_paths(root):
            try:
                scene = read_scene_folder(path)
                if size is not None and (scene.height, scene.width) != (size, size):
                    raise DataError(f"size {scene.width}x{scene.height}, expected {size}x{size}")
            except DataError as exc:
                report.add(path, str(exc))
                continue
            stats.add(scene)
            report.loaded += 1
            yield path.name, example_to_record(scene_to_example(scene, path.name))
        self._record_split(split, report, stats)
        if not report.loaded:
            raise DataError(f"{root}: no readable scene folder ({report.summary()})")


@dataclasses.dataclass
class _SplitStats:
    max_foregrounds: int = 0
    sizes: set[tuple[int, int]] = dataclasses.field(default_factory=set)

    def add(self, scene: LayeredScene) -> None:
        self.max_foregrounds = max(self.max_foregrounds, scene.num_foregrounds)
        self.sizes.add((scene.height, scene.width))


def build_dataset(
    config_name: str,
    data_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    **params: Any,
) -> Path:
    """Build `dreamlayer_scenes/<config_name>` under `data_dir`; return its folder.

    `params` are the fields of `SyntheticParams` or `FolderParams`. A dataset already
    built there with the same parameters is reused; with other parameters this raises
    ConfigError unless `overwrite` (which rebuilds it; also use it when the scene folders
    behind an unchanged `root` changed). Skipped folders are logged (warning) and listed
    in `dataset_metadata(path)["splits"][split]`.
    """
    config_params = make_params(config_name, params)
    builder = DreamlayerScenes(
        config=config_name,
        data_dir=os.fspath(data_dir),
        file_format="array_record",
        params=config_params,
    )
    path = Path(os.fspath(builder.data_path))
    if builder.is_prepared() and not overwrite:
        stored = dataset_metadata(path).get("params")
        if stored != _params_json(config_params):
            raise ConfigError(
                f"{path}: already built with parameters {stored}, not "
                f"{_params_json(config_params)}; pass overwrite=True or another data_dir"
            )
        return path
    mode = tfds.download.GenerateMode
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            download_mode=mode.REUSE_CACHE_IF_EXISTS if overwrite else mode.REUSE_DATASET_IF_EXISTS
        )
    )
    return path


def _read_only_builder(dataset_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    path = Path(dataset_dir)
    if not (path / "dataset_info.json").is_file():
        raise DataError(
            f"{path}: not a built dataset (no dataset_info.json); pass the folder "
            "build_dataset returned"
        )
    return tfds.builder_from_directory(os.fspath(path))


def dataset_metadata(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """The build parameters and per-split counts stored with a built dataset:
    `{"params": {...}, "splits": {split: {"loaded", "skipped", "skipped_items",
    "max_foregrounds", "sizes"}}}`."""
    return json.loads(json.dumps(dict(_read_only_builder(dataset_dir).info.metadata)))


class SceneSource:
    """A grain `RandomAccessDataSource` over one split: `source[i]` is a `SceneExample`.

    Picklable (for grain worker processes): it keeps only the folder and split, and
    opens the array_record files on first use in each process.
    """

    def __init__(self, dataset_dir: str | os.PathLike, split: str) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.split = str(split)
        self._records: Sequence[Any] | None = None
        self._open()  # fail now, not in a worker, on a wrong folder or split

    def _open(self) -> Sequence[Any]:
        if self._records is None:
            builder = _read_only_builder(self.dataset_dir)
            splits = sorted(builder.info.splits.keys())
            if self.split not in splits:
                raise DataError(f"{self.dataset_dir}: no split {self.split!r}; has {splits}")
            self._records = builder.as_data_source(split=self.split)
        return self._records

    def __len__(self) -> int:
        return len(self._open())

    def __getitem__(self, index: SupportsIndex) -> SceneExample:
        records = self._open()
        position = index.__index__()
        if not -len(records) <= position < len(records):
            raise IndexError(f"index {position} out of range for {len(records)} scenes")
        return record_to_example(records[position % len(records)])

    def __getitems__(self, indices: Sequence[int]) -> list[SceneExample]:
        return [record_to_example(r) for r in self._open().__getitems__(list(indices))]

    def __getstate__(self) -> dict[str, Any]:
        return {"dataset_dir": self.dataset_dir, "split": self.split}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.dataset_dir, self.split, self._records = state["dataset_dir"], state["split"], None

    def __repr__(self) -> str:
        return f"SceneSource({str(self.dataset_dir)!r}, split={self.split!r})"


def load_source(data_dir: str | os.PathLike, split: str) -> SceneSource:
    """The `split` ("train" / "eval") of the dataset folder `build_dataset` returned."""
    return SceneSource(data_dir, split)

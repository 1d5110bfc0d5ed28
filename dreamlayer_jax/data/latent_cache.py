"""The latent cache: scenes with their latents and text embeddings computed once, as a
TFDS `array_record` dataset read by grain (no TensorFlow).

    write_cache(out, records, fingerprint=..., empty=..., split="train")
    source = CacheSource(folder, "train")     # a grain RandomAccessDataSource
    source[0]["latents"].shape                # (L, h, w, c): one padded scene

Each record is one scene laid out in `L` slots (`data.batch.pad_example`):

    latents          float32 [L, h, w, c]  the codec's encoding of each slot
    latents_flipped  float32 [L, h, w, c]  the same of the mirrored pixels (flip_prob)
    text             float32 [L, T, D]     each slot's prompt encoded (the paper variant's
                                           global slot: the layers' prompts concatenated)
    layer_valid      uint8 [L], boxes float32 [L, 4], prompts L str, scene_id, num_foregrounds
    text_embeds      float32 [L, P], time_ids float32 [L, 6]   (SDXL only)
    token_ids        int32 [L, T]          (paper variant: its global slot's token owners)
    alphas           uint8 [L, H, W]       (paper variant, edge_loss_weight > 0)

`empty_prompt.npz` beside the records holds the empty prompt's `text [T, D]` (and
`text_embeds [P]`): prompt dropout swaps a slot's embedding for it, as the raw path
encodes "" there. `metadata.json`'s `fingerprint` says which codec, text encoders,
tokenizers, variant and `L` made the cache (`training.latent_cache` checks it). Records
keep the order of the scenes they came from, so the cached pipeline draws the same
scenes, flips and drops as the raw one for a seed (`pipeline_ops`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, SupportsIndex

import numpy as np
import tensorflow_datasets as tfds

from dreamlayer_jax.data.compositing import to_float
from dreamlayer_jax.data.input_pipeline import flip_boxes
from dreamlayer_jax.errors import ConfigError, DataError
from dreamlayer_jax.io.atomic import staged_folder

CACHE_NAME = "dreamlayer_latents"
EMPTY_FILE = "empty_prompt.npz"
FLOAT_KEYS = ("latents", "latents_flipped", "text", "text_embeds", "time_ids")
OPTIONAL_KEYS = ("text_embeds", "time_ids", "token_ids", "alphas")
_DTYPES = {"token_ids": np.int32, "alphas": np.uint8}


def _features(keys: Sequence[str]) -> tfds.features.FeaturesDict:
    zlib = tfds.features.Encoding.ZLIB

    def tensor(ndim: int, dtype: Any) -> tfds.features.Tensor:
        return tfds.features.Tensor(shape=(None,) * ndim, dtype=dtype,
                                    encoding=zlib if ndim > 1 else tfds.features.Encoding.NONE)

    ndims = {"latents": 4, "latents_flipped": 4, "text": 3, "text_embeds": 2,
             "time_ids": 2, "token_ids": 2, "alphas": 3}
    feats: dict[str, Any] = {
        "scene_id": tfds.features.Text(),
        "prompts": tfds.features.Sequence(tfds.features.Text()),
        "layer_valid": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
        "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
        "num_foregrounds": tfds.features.Scalar(dtype=np.int32),
    }
    for key in ("latents", "latents_flipped", "text", *keys):
        feats[key] = tensor(ndims[key], _DTYPES.get(key, np.float32))
    return tfds.features.FeaturesDict(feats)


class DreamlayerLatents(tfds.core.GeneratorBasedBuilder):
    """Cached scenes (module docstring); `records` and `metadata` are given to build,
    reading a prepared cache needs neither. Records keep their order on disk."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Latents, flipped latents and text embeddings per slot."}
    code_path = None  # no downloads, no checksums file (see DreamlayerScenes)

    def __init__(self, *, records: Iterable[dict[str, Any]] = (), split: str = "train",
                 keys: Sequence[str] = (), metadata: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        self._records, self._split, self._keys = records, split, tuple(keys)
        self._metadata = dict(metadata or {})
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        metadata = tfds.core.MetadataDict(**self._metadata, num_foregrounds=[])
        return tfds.core.DatasetInfo(builder=self, description="DreamLayer latent cache.",
                                     features=_features(self._keys), metadata=metadata,
                                     disable_shuffling=True)  # record i is scene i

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        del dl_manager
        return {self._split: self._generate_examples()}

    def _generate_examples(self):
        counts = self.info.metadata["num_foregrounds"]  # saved when the build ends
        for index, record in enumerate(self._records):
            counts.append(int(record["num_foregrounds"]))
            yield f"{index:09d}", record


def write_cache(out: str | os.PathLike, records: Iterable[dict[str, Any]], *,
                keys: Sequence[str], metadata: Mapping[str, Any],
                empty: Mapping[str, np.ndarray], split: str = "train") -> Path:
    """Write the cache folder `out` atomically (nothing is left there on any error) and
    return its versioned dataset folder. `records` are dicts of the module docstring's
    fields (`keys`: the optional ones present); `metadata` must be JSON-able."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty: pick another --out")
    with staged_folder(out, "the latent cache") as tmp:
        builder = DreamlayerLatents(records=records, split=split, keys=keys,
                                    metadata=metadata, data_dir=os.fspath(tmp),
                                    file_format="array_record")
        builder.download_and_prepare()
        folder = Path(os.fspath(builder.data_path))
        np.savez(folder / EMPTY_FILE, **{k: np.asarray(v) for k, v in empty.items()})
        relative = folder.relative_to(tmp)
    return out / relative


def find_cache(path: str | os.PathLike) -> Path:
    """The versioned cache folder of `path` (that folder, or the `--out` root above it)."""
    folder = Path(path)
    found = ([folder] if (folder / EMPTY_FILE).is_file()
             else sorted(p.parent for p in folder.glob(f"**/{EMPTY_FILE}")))
    if not folder.exists() or len(found) != 1:
        raise DataError(f"{path} is not a latent cache (made by dreamlayer-cache-latents: "
                        f"{len(found)} caches below it)")
    return found[0]


class CacheSource:
    """A grain `RandomAccessDataSource` over one split of a cache: `source[i]` is a
    dict of numpy arrays (module docstring). Picklable; opens its files lazily."""

    def __init__(self, path: str | os.PathLike, split: str = "train") -> None:
        self.folder, self.split = find_cache(path), str(split)
        self._records: Any = None
        self._open()
        self._metadata = dict(tfds.builder_from_directory(os.fspath(self.folder)).info.metadata)
        with np.load(self.folder / EMPTY_FILE) as empty:
            self.empty = {k: np.asarray(empty[k]) for k in empty.files}

    def _open(self) -> Any:
        if self._records is None:
            builder = tfds.builder_from_directory(os.fspath(self.folder))
            if self.split not in builder.info.splits:
                raise DataError(f"{self.folder}: no split {self.split!r}; has "
                                f"{sorted(builder.info.splits.keys())}")
            self._records = builder.as_data_source(split=self.split)
        return self._records

    def __len__(self) -> int:
        return len(self._open())

    def __getitem__(self, index: SupportsIndex) -> dict[str, Any]:
        return _decode(self._open()[index.__index__()])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [_decode(r) for r in self._open().__getitems__(list(indices))]

    def foreground_counts(self) -> np.ndarray:
        """`int64[N]`: each scene's foreground count (for a curriculum)."""
        return np.asarray(self.metadata()["num_foregrounds"], np.int64)

    def metadata(self) -> dict[str, Any]:
        """What `write_cache` stored: `fingerprint`, `keys`, `count`, `num_foregrounds`..."""
        return self._metadata

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_records"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._records = None

    def pipeline_ops(self, augment: Any) -> tuple[Callable, Callable, Callable]:
        """`(pad, augment, collate)` for `input_pipeline.make_train_dataset`: records
        are padded already, `augment`'s draws pick the flipped latents and the empty
        prompt's embedding (`CachedAugment`), batches stack every array."""
        return check_slots, CachedAugment(augment, self.empty), collate_cached


def _decode(record: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: np.asarray(v) for k, v in record.items() if k not in ("scene_id", "prompts")}
    out["layer_valid"] = out["layer_valid"].astype(bool)
    out["scene_id"] = _text(record["scene_id"])
    out["prompts"] = [_text(p) for p in record["prompts"]]
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def check_slots(example: dict[str, Any], max_layers: int) -> dict[str, Any]:
    """A cached scene as it is, if it has `max_layers` slots (ConfigError otherwise)."""
    if len(example["layer_valid"]) != max_layers:
        raise ConfigError(f"the latent cache holds {len(example['layer_valid'])} layer slots "
                          f"per scene, the run max_layers={max_layers}: cache again")
    return example


@dataclasses.dataclass(frozen=True)
class CachedAugment:
    """grain random map over cached scenes: the raw pipeline's `Augment` draws (same
    order, so the same decisions), applied to what was cached: the flipped latents,
    boxes and alphas on a flip, the empty prompt's embedding in a dropped slot."""

    augment: Any  # input_pipeline.Augment
    empty: Mapping[str, np.ndarray]

    def __call__(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        flip, drop = self.augment.draw(rng, len(example["layer_valid"]))
        out = {k: v for k, v in example.items() if k != "latents_flipped"}
        if flip:
            out["latents"] = example["latents_flipped"]
            out["boxes"] = flip_boxes(example["boxes"])
            if "alphas" in example:
                out["alphas"] = np.ascontiguousarray(example["alphas"][:, :, ::-1])
        if drop.any():
            for key in ("text", "text_embeds"):
                if key in out:
                    out[key] = np.where(drop.reshape(-1, *[1] * (out[key].ndim - 1)),
                                        self.empty[key][None], out[key])
            out["prompts"] = ["" if d else p for p, d in zip(out["prompts"], drop.tolist())]
        if "alphas" in out:
            out["alphas"] = to_float(out["alphas"])
        return out


def collate_cached(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack cached scenes into a batch: every array `[B, L, ...]`, `prompts` (B lists
    of L str) and `scene_ids`."""
    if not examples:
        raise DataError("cannot collate an empty list of examples")
    batch: dict[str, Any] = {k: np.stack([e[k] for e in examples]) for k, v in
                             examples[0].items() if isinstance(v, np.ndarray)}
    batch["prompts"] = [list(e["prompts"]) for e in examples]
    batch["scene_ids"] = [e["scene_id"] for e in examples]
    return batch

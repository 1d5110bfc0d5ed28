"""Reading LayerDiffuse's released weight files and merging its SDXL UNet patches.

LayerDiffuse ships bare PyTorch state dicts (safetensors, mostly fp16):

- `vae_transparent_decoder.safetensors` (SDXL), `layer_sd15_vae_transparent_decoder
  .safetensors` (SD1.5): kind `decoder`, a `UNet1024` (`models.transparent_vae`);
- `vae_transparent_encoder.safetensors`: kind `encoder`, the latent offset encoder
  (`models.transparent_encoder`);
- `layer_xl_transparent_attn.safetensors`: kind `lora`, `<ldm key>::lora::0` (up) and
  `::lora::1` (down) on SDXL's attention projections;
- `layer_xl_transparent_conv.safetensors`: kind `diff`, `<ldm key>::diff::0` full-weight
  deltas.

Every reader validates (unreadable or truncated file, NaN/Inf, wrong key set, wrong shapes)
and fails with one `WeightsError` naming the file and the offending tensors.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from dreamlayer_jax.errors import WeightsError
from dreamlayer_jax.io.safetensors_io import _read_file, load_config
from dreamlayer_jax.io.torch_to_nnx import _to_nnx_layout, _torch_shape, torch_key
from dreamlayer_jax.io.torch_to_nnx import load_torch_state_into as _load_into
from dreamlayer_jax.models.transparent_encoder import OffsetEncoderConfig, TransparentVAEEncoder
from dreamlayer_jax.models.transparent_vae import TransparentVAEDecoder, UNet1024Config

KINDS = ("decoder", "encoder", "lora", "diff")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
FOLDER_CLASS = "LayerDiffuse"  # `_class_name` of a converted folder's config.json
PARTS = {"decoder": "transparent_decoder", "encoder": "transparent_encoder",
         "lora": "unet_lora", "diff": "unet_diff"}
"""The subfolder of a converted LayerDiffuse folder holding each kind of file."""


def _summary(names: Sequence[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


def _weights_file(path: str | os.PathLike) -> Path:
    """`path` itself, or the weights file inside a converted folder."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise WeightsError(f"LayerDiffuse weights file {str(path)!r} does not exist")
    return path


def read_layerdiffuse_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one file (or converted folder) as numpy arrays, in their own dtype.

    Raises `WeightsError` for a missing, unreadable or truncated file and for tensors
    holding NaN or Inf (a broken fp16 conversion).
    """
    path = _weights_file(path)
    state = _read_file(path)
    if not state:
        raise WeightsError(f"{str(path)!r} holds no tensors")
    bad = [k for k, v in state.items()  # bfloat16 (kind "V") is checked through float32
           if v.dtype.kind in "fV" and not np.isfinite(
               v if v.dtype.kind == "f" else v.astype(np.float32)).all()]
    if bad:
        raise WeightsError(f"{str(path)!r}: {len(bad)} tensors hold NaN or Inf: {_summary(bad)}")
    return state


def identify(state: Mapping[str, Any], what: str = "file") -> str:
    """Which LayerDiffuse file `state` is: one of `KINDS`, or a `WeightsError`."""
    keys = list(state)
    if all("::" in k for k in keys):
        kinds = {k.split("::")[1] for k in keys}
        if kinds == {"lora"}:
            return "lora"
        if kinds == {"diff"}:
            return "diff"
        raise WeightsError(f"{what}: UNet patch keys of kinds {sorted(kinds)}; expected only "
                           "'::lora::' or only '::diff::'")
    if "latent_conv_in.weight" in state:
        return "decoder"
    if keys and all(re.fullmatch(r"blocks\.\d+\.(weight|bias)", k) for k in keys):
        return "encoder"
    raise WeightsError(f"{what} is not a LayerDiffuse file (no transparent decoder, offset "
                       f"encoder or UNet patch keys; first keys: {_summary(keys)})")


def _load_module(cls: type, path: str | os.PathLike, config: Any, kind: str,
                 dtype: jnp.dtype, param_dtype: jnp.dtype) -> Any:
    path = Path(path)
    if config is None and path.is_dir() and (path / "config.json").is_file():
        config = cls.config_class.from_dict(load_config(path))
    config = config or cls.config_class()
    state = read_layerdiffuse_file(path)
    found = identify(state, repr(str(path)))
    if found != kind:
        raise WeightsError(f"{str(path)!r} is a LayerDiffuse {found} file, not a {kind}")
    return _load_into(lambda rngs: cls(config, rngs=rngs, dtype=dtype), state,
                      what=f"{cls.__name__} ({path})", dtype=param_dtype)


def load_transparent_decoder(path: str | os.PathLike, config: UNet1024Config | None = None,
                             dtype: jnp.dtype = jnp.float32,
                             param_dtype: jnp.dtype = jnp.float32) -> TransparentVAEDecoder:
    """LayerDiffuse's transparent VAE decoder from a bare file or a converted folder.

    `config` defaults to the folder's config.json, else LayerDiffuse's released config.
    fp16 files load into `param_dtype` (float32) parameters.
    """
    return _load_module(TransparentVAEDecoder, path, config, "decoder", dtype, param_dtype)


def load_transparent_encoder(path: str | os.PathLike, config: OffsetEncoderConfig | None = None,
                             dtype: jnp.dtype = jnp.float32,
                             param_dtype: jnp.dtype = jnp.float32) -> TransparentVAEEncoder:
    """LayerDiffuse's latent offset encoder from a bare file or a converted folder."""
    return _load_module(TransparentVAEEncoder, path, config, "encoder", dtype, param_dtype)


_RESNET = (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
           ("out_layers.0", "norm2"), ("out_layers.3", "conv2"),
           ("skip_connection", "conv_shortcut"))
_TOP = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
        "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2",
        "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}


def _resnet(rest: str) -> str:
    for old, new in _RESNET:
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    raise KeyError(rest)


def ldm_to_diffusers_key(key: str, block_layers: Sequence[int]) -> str:
    """The diffusers `UNet2DConditionModel` name of an LDM (original Stable Diffusion) UNet
    key, e.g. `diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight` ->
    `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight` for SDXL.

    `block_layers[i]` is the number of resnets of down block `i` (SDXL: `(2, 2, 2)`); the
    up block mirroring it has one more. A `diffusion_model.` / `model.diffusion_model.`
    prefix is dropped. Raises `KeyError` for a key with no diffusers counterpart.
    """
    key = re.sub(r"^(model\.)?diffusion_model\.", "", key)
    for old, new in _TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    mid = re.fullmatch(r"middle_block\.(\d+)\.(.+)", key)
    if mid is not None:
        sub, rest = int(mid.group(1)), mid.group(2)
        if sub % 2 == 0:
            return f"mid_block.resnets.{sub // 2}.{_resnet(rest)}"
        return f"mid_block.attentions.{sub // 2}.{rest}"
    match = re.fullmatch(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)", key)
    if match is None:
        raise KeyError(key)
    part, rest = match.group(1), match.group(4)
    index, sub = int(match.group(2)), int(match.group(3))
    last = len(block_layers) - 1
    if part == "input_blocks":
        start = 1
        for block, layers in enumerate(block_layers):
            slots = layers + (block < last)
            if start <= index < start + slots:
                layer = index - start
                prefix = f"down_blocks.{block}"
                if layer == layers and sub == 0 and rest.startswith("op."):
                    return f"{prefix}.downsamplers.0.conv.{rest[3:]}"
                if layer < layers and sub == 0:
                    return f"{prefix}.resnets.{layer}.{_resnet(rest)}"
                if layer < layers and sub == 1:
                    return f"{prefix}.attentions.{layer}.{rest}"
                raise KeyError(key)
            start += slots
        raise KeyError(key)
    start = 0
    for i in range(len(block_layers)):
        layers = block_layers[last - i] + 1
        if start <= index < start + layers:
            layer, prefix = index - start, f"up_blocks.{i}"
            if sub == 0:
                return f"{prefix}.resnets.{layer}.{_resnet(rest)}"
            if sub in (1, 2) and layer == layers - 1 and i < last and rest.startswith("conv."):
                return f"{prefix}.upsamplers.0.{rest}"  # after the attention, if any
            if sub == 1:
                return f"{prefix}.attentions.{layer}.{rest}"
            raise KeyError(key)
        start += layers
    raise KeyError(key)


def _patch_entries(state: Mapping[str, np.ndarray], kind: str,
                   what: str) -> dict[str, dict[int, np.ndarray]]:
    """`{ldm weight key: {index: tensor}}` of a `::lora::` or `::diff::` file, checked for
    complete entries: `::diff::0`; `::lora::0` (up `[out, r(, 1, 1)]`), `::lora::1` (down
    `[r, in(, kh, kw)]`) and an optional `::lora::2` (alpha)."""
    groups: dict[str, dict[int, np.ndarray]] = {}
    bad: list[str] = []
    for key, value in state.items():
        name, _, index = key.rpartition(f"::{kind}::")
        if not name or not index.isdigit():
            bad.append(key)
            continue
        if not name.endswith((".weight", ".bias")):
            name += ".weight"
        groups.setdefault(name, {})[int(index)] = value
    for name, parts in groups.items():
        allowed = ({0},) if kind == "diff" else ({0, 1}, {0, 1, 2})
        if set(parts) not in allowed:
            bad.append(f"{name}::{kind}::{sorted(parts)}")
        elif kind == "lora" and (parts[0].ndim < 2 or parts[0].shape[1] != parts[1].shape[0]):
            bad.append(f"{name} (up {parts[0].shape} does not fit down {parts[1].shape})")
    if bad:
        raise WeightsError(f"{what}: {len(bad)} malformed {kind} entries: {_summary(bad)}")
    return groups


def _delta_shape(parts: dict[int, np.ndarray], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the entry's delta has once fitted to a weight of (torch) `shape`."""
    if 1 not in parts:
        return tuple(parts[0].shape)
    numel = parts[0].shape[0] * int(np.prod(parts[1].shape[1:]))
    return shape if numel == int(np.prod(shape)) else (parts[0].shape[0], *parts[1].shape[1:])


def _delta(parts: dict[int, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """The float32 delta (PyTorch layout, `shape`): `diff`, or `up @ down` times
    `alpha / r` where an alpha is given (ComfyUI's rule; LayerDiffuse's files have none:
    scale 1)."""
    if 1 not in parts:
        return parts[0].astype(np.float32)
    up, down = parts[0].astype(np.float32), parts[1].astype(np.float32)
    rank = down.shape[0]
    scale = float(np.asarray(parts[2], np.float32).reshape(())) / rank if 2 in parts else 1.0
    return (scale * (up.reshape(up.shape[0], -1) @ down.reshape(rank, -1))).reshape(shape)


def _patch_files(path: str | os.PathLike) -> list[Path]:
    """The UNet patch files behind `path`: a file, a converted part folder, or a converted
    LayerDiffuse folder (all its `unet_lora/`, `unet_diff/` parts)."""
    path = Path(path)
    if path.is_dir() and not (path / WEIGHTS_NAME).is_file():
        files = [path / PARTS[k] / WEIGHTS_NAME for k in ("lora", "diff")
                 if (path / PARTS[k] / WEIGHTS_NAME).is_file()]
        if not files:
            raise WeightsError(f"{str(path)!r} holds no LayerDiffuse UNet patch "
                               f"({PARTS['lora']}/ or {PARTS['diff']}/)")
        return files
    return [_weights_file(path)]


def merge_layerdiffuse_attention(unet: nnx.Module, path: str | os.PathLike,
                                 strength: float = 1.0) -> int:
    """Merge LayerDiffuse's SDXL UNet patch(es) at `path` into `unet`, in place.

    `unet` is our `UNet2DConditionModel` (or a `DreamLayerUNet`: its `.unet`, LoRA
    adapters or not). `::lora::` files add `strength * up @ down` to the attention
    projections, `::diff::` files add `strength * delta` to any weight; the LDM keys are
    renamed with `ldm_to_diffusers_key`. Everything is checked before anything changes
    (unknown keys, missing parameters, shapes), so a bad file leaves `unet` as it was.
    Returns the number of parameters changed.
    """
    target = getattr(unet, "unet", unet)
    block_layers = target.config.block_layers
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(target, nnx.Param)))
    by_key = {torch_key(p): p for p in flat}
    planned: list[tuple[tuple[Any, ...], dict[int, np.ndarray]]] = []
    for file in _patch_files(path):  # check every file before changing anything
        what = repr(str(file))
        raw = read_layerdiffuse_file(file)
        kind = identify(raw, what)
        if kind not in ("lora", "diff"):
            raise WeightsError(f"{what} is a LayerDiffuse {kind} file, not a UNet patch")
        unknown, missing, misshaped = [], [], []
        for ldm, parts in _patch_entries(raw, kind, what).items():
            try:
                key = ldm_to_diffusers_key(ldm, block_layers)
            except KeyError:
                unknown.append(ldm)
                continue
            if key not in by_key:
                missing.append(f"{ldm} -> {key}")
                continue
            p = by_key[key]
            shape = _torch_shape(p, flat[p].shape)
            if _delta_shape(parts, shape) != shape:
                misshaped.append(f"{ldm} {_delta_shape(parts, shape)} (expected {shape})")
                continue
            planned.append((p, parts))
        problems = [f"{len(v)} {name}: {_summary(v)}" for name, v in (
            ("keys with no diffusers UNet name", unknown),
            ("keys naming no parameter of this UNet", missing), ("mis-shaped", misshaped)) if v]
        if problems:
            raise WeightsError(f"{what} does not fit this UNet: " + "; ".join(problems))
    for p, parts in planned:  # one tensor at a time: memory stays one weight's delta
        value = flat[p]
        delta = _to_nnx_layout(str(p[-1]), _delta(parts, _torch_shape(p, value.shape)),
                               value.shape)
        flat[p] = (value.astype(jnp.float32) + strength * delta).astype(value.dtype)
        nnx.update(target, nnx.State(traverse_util.unflatten_dict({p: flat[p]})))
    return len({p for p, _ in planned})

"""Photoshop files (.psd, .psb) as plain RGBA layers: what is baked, what is refused.

The layer tree is walked bottom first. Each visible layer becomes one straight-alpha
sRGB layer, rendered by psd-tools on a transparent canvas with what belongs to it
alone folded in: opacity, fill opacity, layer and vector masks, the effects psd-tools
draws (colour / gradient / pattern overlay, stroke), its clipped layers (merged into
it: a clipped layer is part of its base's look), and, for shape and fill layers
without stored pixels, its shape or fill. A group is a folder: its children become
layers of their own, its opacity folded into them, unless that would not be exact
(children that overlap under a group opacity below 100%, a group mask, group effects,
clipped layers on the group, an isolated group holding blend modes or adjustments):
then the group is rendered as one layer named after it.

Refused, with one line naming the layer: blend modes other than normal on anything
painted over other pixels (the result depends on what is below), dissolve, adjustment
layers that act on the layers below, effects psd-tools does not draw (shadows, glows,
bevel, satin), blend-if ranges and knockout. Colour: RGB, grayscale, CMYK and Lab
documents at 8, 16 or 32 bits become 8-bit sRGB through the file's ICC profile
(`data/psd_colour.py` says what else is read or refused). The scene this project
wrote the file from, if any, is read from its XMP metadata (`io/scene_record.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from psd_tools import PSDImage
from psd_tools.api.layers import AdjustmentLayer, FillLayer, Layer, ShapeLayer
from psd_tools.composite import composite
from psd_tools.constants import BlendMode, Resource, Tag

from dreamlayer_jax.data.layer_stack import (
    FLAT_PICTURE,
    LayerStack,
    StackLayer,
    clean_name,
    describe,
    fold_group_opacity,
    paste,
    refuse,
    scale_alpha,
    to_rgba8,
)
from dreamlayer_jax.data.psd_colour import DocumentColour
from dreamlayer_jax.io.scene_record import read_record

PSD_SUFFIXES = (".psd", ".psb")
# Effects psd-tools draws (so they can be baked into the layer); the others it does not.
DRAWN_EFFECTS = ("colour overlay", "gradient overlay", "pattern overlay", "stroke")
# The effects' keys in the layer's effects descriptor (lfx2 / lmfx), and their names.
_EFFECT_KEYS = {
    "DrSh": "drop shadow", "dropShadowMulti": "drop shadow",
    "IrSh": "inner shadow", "innerShadowMulti": "inner shadow",
    "OrGl": "outer glow", "IrGl": "inner glow", "ebbl": "bevel and emboss", "ChFX": "satin",
    "SoFi": "colour overlay", "solidFillMulti": "colour overlay",
    "GrFl": "gradient overlay", "gradientFillMulti": "gradient overlay",
    "patternFill": "pattern overlay", "FrFX": "stroke", "frameFXMulti": "stroke",
}
# The legacy effects block (lrFX), which old files carry alone.
_LEGACY_EFFECTS = {"dsdw": "drop shadow", "isdw": "inner shadow", "oglw": "outer glow",
                   "iglw": "inner glow", "bevl": "bevel and emboss", "sofi": "colour overlay"}
_GROUP_MODES = (BlendMode.PASS_THROUGH, BlendMode.NORMAL)


def _mode_name(mode: BlendMode) -> str:
    return mode.name.lower().replace("_", " ")


def _key(key: Any) -> str:
    key = getattr(key, "value", key)
    return key.decode("latin-1").strip() if isinstance(key, bytes) else str(key).strip()


def _on(value: Any) -> bool:
    return bool(getattr(value, "value", value))


def _enabled_effects(layer: Layer) -> list[str]:
    """The names of the layer effects the layer draws, read from the effects descriptor
    itself (psd-tools' `layer.effects` skips entries of older files that lack an
    "enabled" flag, although Photoshop draws them)."""
    names: list[str] = []
    blocks = layer.tagged_blocks
    for tag in (Tag.OBJECT_BASED_EFFECTS_LAYER_INFO, Tag.OBJECT_BASED_EFFECTS_LAYER_INFO_V0,
                Tag.OBJECT_BASED_EFFECTS_LAYER_INFO_V1):
        block = blocks.get_data(tag)
        if block is None:
            continue
        entries = {_key(k): v for k, v in block.items()}
        if not _on(entries.get("masterFXSwitch", True)):
            return []
        for key, value in entries.items():
            name = _EFFECT_KEYS.get(key)
            if not name:
                continue
            items = [value] if hasattr(value, "items") else list(value)
            for item in items:
                fields = {_key(k): v for k, v in item.items()} if hasattr(item, "items") else {}
                if _on(fields.get("enab", True)) and _on(fields.get("present", True)):
                    names.append(name)
        return list(dict.fromkeys(names))
    legacy = blocks.get_data(Tag.EFFECTS_LAYER)
    for key, info in (legacy.items() if legacy is not None else []):
        name = _LEGACY_EFFECTS.get(_key(key))
        if name and _on(getattr(info, "enabled", False)):
            names.append(name)
    return list(dict.fromkeys(names))


# Tagged blocks of adjustment layers, including the legacy ones psd-tools reads as
# pixel layers without pixels (e.g. b"brit", the old brightness/contrast).
_ADJUSTMENT_TAGS = {b"brit": "brightness/contrast", b"levl": "levels", b"curv": "curves",
                    b"expA": "exposure", b"vibA": "vibrance", b"hue ": "hue/saturation",
                    b"hue2": "hue/saturation", b"blnc": "color balance",
                    b"blwh": "black and white", b"phfl": "photo filter",
                    b"mixr": "channel mixer", b"clrL": "color lookup", b"nvrt": "invert",
                    b"post": "posterize", b"thrs": "threshold", b"selc": "selective color",
                    b"grdm": "gradient map"}


def _adjustment(layer: Layer) -> str | None:
    """The kind of adjustment `layer` is, or None."""
    if isinstance(layer, AdjustmentLayer):
        return layer.kind
    if layer.is_group() or isinstance(layer, FillLayer) or layer.has_pixels():
        return None
    for tag in layer.tagged_blocks:
        value = getattr(tag, "value", tag)
        if value in _ADJUSTMENT_TAGS:
            return _ADJUSTMENT_TAGS[value]
    return None


def _blending_inside(group: Layer) -> str | None:
    """A visible member of `group` that blends with what is below it (an adjustment,
    a blend mode other than normal), named; None if there is none."""
    for child in group.descendants():
        if not child.is_visible():
            continue
        kind = _adjustment(child)
        name = describe("layer", clean_name(child.name), 0)
        if kind:
            return f"adjustment {name} ({kind})"
        if child.blend_mode not in (BlendMode.NORMAL, BlendMode.PASS_THROUGH):
            return f"{name} in blend mode {_mode_name(child.blend_mode)}"
    return None


def _blend_if(layer: Layer) -> bool:
    """Whether the layer has blend-if ranges set (its pixels then show or not depending
    on the layers below)."""
    ranges = layer._record.blending_ranges
    pairs = list(ranges.composite_ranges or [])
    for channel in ranges.channel_ranges or []:
        pairs += list(channel)
    # (0, 65535) is "black 0 0, white 255 255": the default; some writers leave zeros
    return any(tuple(pair) not in ((0, 65535), (0, 0)) for pair in pairs)


class _Walk:
    def __init__(self, psd: PSDImage, path: Path, stack: LayerStack, colour: DocumentColour):
        self.psd, self.path, self.stack, self.colour = psd, path, stack, colour
        self.index = 0  # layers seen, from the bottom (names unnamed ones in messages)
        self.painted = False  # whether anything was painted below the current layer

    # -- rendering ------------------------------------------------------------------
    def render(self, layer: Layer, coverage: float) -> np.ndarray:
        # psd-tools applies a vector mask to stored pixels only when forced to draw
        # vectors; a shape layer's stored pixels are already the drawn shape.
        force = (layer.has_vector_mask() and not layer.vector_mask.disabled
                 and not isinstance(layer, ShapeLayer | FillLayer) and layer.has_pixels())
        # A plain layer's stored pixels bound what it paints: render only there.
        viewport = self.psd.viewbox
        if (not layer.is_group() and layer.has_pixels() and not isinstance(layer, FillLayer)
                and not _enabled_effects(layer) and not layer.clip_layers):
            x0, y0, x1, y1 = layer.bbox
            viewport = (max(x0, 0), max(y0, 0), min(x1, self.psd.width),
                        min(y1, self.psd.height))
        canvas = np.zeros((self.psd.height, self.psd.width, 4), np.uint8)
        if viewport[0] >= viewport[2] or viewport[1] >= viewport[3]:
            return canvas
        color, _, alpha = composite(layer, color=0.0, alpha=0.0, viewport=viewport,
                                    as_layer=True, force=force)
        rgba = to_rgba8(self.colour(color), alpha[..., 0])
        paste(canvas, rgba, viewport[0], viewport[1])
        return scale_alpha(canvas, coverage)

    def emit(self, layer: Layer, where: str, coverage: float) -> StackLayer:
        piece = StackLayer(clean_name(layer.name), where, self.render(layer, coverage),
                           tuple(layer.bbox))
        self.painted = self.painted or not piece.empty
        return piece

    # -- the walk -------------------------------------------------------------------
    def container(self, layers: Any, coverage: float, notes: list[str]) -> list[StackLayer]:
        out: list[StackLayer] = []
        has_base = False
        for layer in layers:  # bottom first
            if layer.clipping and has_base:
                continue  # handled with the layer it is clipped to
            has_base = True
            self.index += 1
            kind = "group" if layer.is_group() else "layer"
            where = describe(kind, clean_name(layer.name), self.index)
            if not layer.visible:
                self.stack.skipped.append(f"hidden {where}")
                continue
            if layer.is_group():
                out += self.group(layer, where, coverage, notes)
            else:
                out.append(self.layer(layer, where, coverage, notes))
        return out

    def common_checks(self, layer: Layer, where: str) -> None:
        if _blend_if(layer):
            raise refuse(self.path, f"{where}: blend-if ranges (blending options) depend on "
                                    "the layers below and cannot be stored as a plain RGBA layer")
        if layer.tagged_blocks.get_data(Tag.KNOCKOUT_SETTING, 0):
            raise refuse(self.path, f"{where}: knockout cannot be stored as a plain RGBA layer")

    def clips(self, layer: Layer, where: str, notes: list[str]) -> list[Layer]:
        clips = []
        for clip in layer.clip_layers:
            self.index += 1
            name = describe("layer", clean_name(clip.name), self.index)
            if clip.visible:
                clips.append(clip)
                self.common_checks(clip, name)
            else:
                self.stack.skipped.append(f"hidden {name}")
        if clips:
            names = []
            for clip in clips:
                label = describe("", clean_name(clip.name), 0).strip()
                extra = [_adjustment(clip) or ""]
                if clip.blend_mode not in (BlendMode.NORMAL, BlendMode.PASS_THROUGH):
                    extra.append(_mode_name(clip.blend_mode))
                extra = [e for e in extra if e]
                names.append(label + (f" ({', '.join(extra)})" if extra else ""))
            notes.append(f"{where}: clipped layers {', '.join(names)} merged into it")
        return clips

    def effects(self, layer: Layer, where: str, notes: list[str]) -> None:
        enabled = _enabled_effects(layer)
        undrawn = [name for name in enabled if name not in DRAWN_EFFECTS]
        if undrawn:
            raise refuse(self.path, f"{where}: layer effect {', '.join(undrawn)} cannot be "
                                    "baked into a plain RGBA layer")
        if enabled:
            notes.append(f"{where}: effects baked ({', '.join(enabled)})")

    def masks(self, layer: Layer, where: str, notes: list[str]) -> None:
        if layer.has_mask() and not layer.mask.disabled:
            notes.append(f"{where}: layer mask baked")
        if layer.has_vector_mask() and not layer.vector_mask.disabled:
            notes.append(f"{where}: vector mask baked")

    def layer(self, layer: Layer, where: str, coverage: float, notes: list[str]) -> StackLayer:
        adjustment = _adjustment(layer)
        if adjustment:
            raise refuse(self.path, f"{where}: adjustment layer ({adjustment}) changes the "
                                    "layers below it and cannot be stored as a plain RGBA layer")
        piece = StackLayer(clean_name(layer.name), where, self.render(layer, coverage),
                           tuple(layer.bbox))
        if piece.empty:  # skipped later; its blend mode, effects... change nothing
            self.index += len(layer.clip_layers)
            return piece
        self.common_checks(layer, where)
        mode = layer.blend_mode
        if mode == BlendMode.DISSOLVE:
            raise refuse(self.path, f"{where}: blend mode dissolve cannot be stored as a plain "
                                    "RGBA layer")
        if mode != BlendMode.NORMAL:
            if self.painted:
                raise refuse(self.path, f"{where}: blend mode {_mode_name(mode)} depends on the "
                                        "layers below and cannot be stored as a plain RGBA layer")
            notes.append(f"{where}: blend mode {_mode_name(mode)} over nothing is normal")
        self.effects(layer, where, notes)
        self.masks(layer, where, notes)
        if layer.fill_opacity != 255:
            notes.append(f"{where}: fill opacity {round(layer.fill_opacity / 2.55)}% baked")
        if isinstance(layer, FillLayer) or not layer.has_pixels():
            notes.append(f"{where}: {layer.kind} layer rendered from its description")
        self.clips(layer, where, notes)
        self.painted = True
        return piece

    def needs_merge(self, group: Layer) -> str | None:
        """Why `group` must be rendered as one layer (None: its children can be split)."""
        if group.has_mask() and not group.mask.disabled:
            return "group mask"
        if group.has_vector_mask() and not group.vector_mask.disabled:
            return "group vector mask"
        if _enabled_effects(group):
            return "group effects"
        if any(clip.visible for clip in group.clip_layers):
            return "layers clipped to the group"
        if group.blend_mode == BlendMode.NORMAL and _blending_inside(group):
            return "blend modes or adjustments inside an isolated group"
        return None

    def group(self, group: Layer, where: str, coverage: float, notes: list[str]
              ) -> list[StackLayer]:
        self.common_checks(group, where)
        if group.blend_mode not in _GROUP_MODES:
            if self.painted:
                raise refuse(self.path, f"{where}: blend mode {_mode_name(group.blend_mode)} "
                                        "depends on the layers below and cannot be stored as "
                                        "a plain RGBA layer")
            notes.append(f"{where}: blend mode {_mode_name(group.blend_mode)} over nothing "
                         "is normal")
        self.effects(group, where, notes)
        for child in group.descendants():
            if child.is_visible() and child.blend_mode == BlendMode.DISSOLVE:
                name = describe("layer", clean_name(child.name), 0)
                raise refuse(self.path, f"{name}: blend mode dissolve cannot be stored as a "
                                        "plain RGBA layer")
        reason = self.needs_merge(group)
        inside = _blending_inside(group)
        if reason is not None and inside and group.blend_mode == BlendMode.PASS_THROUGH:
            raise refuse(self.path, f"{where}: a pass-through group with a {reason} holds "
                                    f"{inside}, which acts on the layers below the group")
        if reason is None:
            opacity = group.opacity / 255.0
            children = fold_group_opacity(self, group, where, coverage, opacity, notes)
            if children is not None:
                return children
            reason = f"group opacity {round(opacity * 100)}% over overlapping layers"
        # rendered whole: count its members for the unnamed-layer numbering
        self.index += sum(1 for _ in group.descendants())
        notes.append(f"{where}: merged into one layer ({reason})")
        self.clips(group, where, [])
        return [self.emit(group, where, coverage)]


def read_psd_stack(path: Path) -> LayerStack:
    """Read a .psd / .psb file as a `LayerStack` (see the module docstring). Raises
    DataError for an unreadable file and RefusedError for one it cannot import
    faithfully."""
    psd = PSDImage.open(path)
    has_layers = len(psd) > 0
    stack = LayerStack("psd", psd.height, psd.width, [], None)
    stack.record = read_record(psd.image_resources.get_data(Resource.XMP_METADATA), True,
                               stack.warnings)
    colour = DocumentColour(psd, path, has_layers, stack.warnings)
    walk = _Walk(psd, path, stack, colour)
    if has_layers:
        stack.layers = walk.container(psd, 1.0, stack.baked)
    if psd.has_preview():
        merged = psd.numpy()
        channels = colour.channels
        alpha = merged[..., channels] if merged.shape[-1] > channels else np.ones(merged.shape[:2])
        stack.reference = to_rgba8(colour(merged[..., :channels]), alpha)
        stack.reference_note = "the file's flattened picture"
    elif has_layers:
        color, _, alpha = composite(psd, color=0.0, alpha=0.0)
        stack.reference = to_rgba8(colour(color), alpha[..., 0])
        stack.reference_note = "psd-tools' rendering (the file stores no flattened picture)"
    if not has_layers:
        if stack.reference is None:
            raise refuse(path, "no layers and no flattened picture")
        stack.layers = [StackLayer("", FLAT_PICTURE, stack.reference,
                                   (0, 0, psd.width, psd.height))]
        stack.baked.append("flat picture (no layers): imported as a background-only scene")
    return stack

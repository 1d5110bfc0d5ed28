"""The scene a layered file carries, so that importing it restores the exact scene.

The PSD and ORA writers (`io/layered_files.py`) embed, when given the scene, a record in
the `scene.json` layout (`Scene.to_dict()`) plus, for the background and each
foreground, the layer's name as written and `area`: the pixel bounds `[x0, y0, x1, y1]`
(end exclusive) of its alpha when written, `null` for an empty layer. The reader uses
the record only while the file's layers are still those written (same names, same
order), and a box only while its layer still covers the same pixels:

    {"dreamlayer_scene": 1, "prompt": str,
     "background": {"prompt": str, "name": str},
     "layers": [{"prompt": str, "box": [x0, y0, x1, y1] (optional), "name": str,
                 "area": [x0, y0, x1, y1] | null}, ...]}

Where it goes: in a PSD, the XMP metadata (image resource 1060) as the property
`dreamlayer:scene` holding the JSON text (XMP is what painting programs keep when they
save a file again); in an ORA, the zip entry `dreamlayer/scene.json`.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from dreamlayer_jax.data.compositing import alpha_bbox
from dreamlayer_jax.data.scene import validate_box
from dreamlayer_jax.errors import DataError, InputError

RECORD_VERSION = 1
ORA_ENTRY = "dreamlayer/scene.json"
XMP_NAMESPACE = "http://ns.dreamlayer-jax.org/scene/1.0/"
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_X = "adobe:ns:meta/"


def make_record(scene: Mapping[str, Any], names: Sequence[str],
                layers: Sequence[np.ndarray]) -> dict[str, Any]:
    """The record of `scene` (the `scene.json` layout: "prompt", "background" (a string
    or `{"prompt": ...}`), "layers" `[{"prompt", "box"?}]`, one per foreground) for
    layers written with `names` (background's first) from `layers`, uint8
    `[H, W, 4]`. Raises InputError when the scene does not describe those layers."""
    if not isinstance(scene, Mapping) or not isinstance(scene.get("layers"), Sequence):
        raise InputError("scene must be a scene.json-like mapping with a 'layers' list")
    entries = list(scene["layers"])
    if len(entries) != len(layers) or len(names) != len(layers) + 1:
        raise InputError(f"scene lists {len(entries)} layers for {len(layers)} layers written")
    background = scene.get("background")
    background = background.get("prompt") if isinstance(background, Mapping) else background
    prompt = scene.get("prompt")
    if not isinstance(background, str) or not isinstance(prompt, str):
        raise InputError("scene needs a string 'prompt' and background prompt")
    out: list[dict[str, Any]] = []
    for index, (entry, name, layer) in enumerate(zip(entries, names[1:], layers)):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("prompt"), str):
            raise InputError(f"scene layers[{index}] needs a string 'prompt'")
        item: dict[str, Any] = {"prompt": entry["prompt"]}
        if entry.get("box") is not None:
            item["box"] = [float(v) for v in validate_box(entry["box"], f"scene layers[{index}]",
                                                          InputError)]
        area = alpha_bbox(np.asarray(layer)[..., 3])
        item.update(name=str(name), area=None if area is None else list(area))
        out.append(item)
    return {"dreamlayer_scene": RECORD_VERSION, "prompt": prompt,
            "background": {"prompt": background, "name": str(names[0])}, "layers": out}


def record_json(record: Mapping[str, Any]) -> bytes:
    """The record as JSON text, ASCII (the ORA entry, and the XMP property's value)."""
    return json.dumps(record, indent=1).encode("ascii")


def record_xmp(record: Mapping[str, Any]) -> bytes:
    """An XMP packet holding the record as the property `dreamlayer:scene`."""
    text = escape(record_json(record).decode("ascii"))
    return (f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            f'<x:xmpmeta xmlns:x="{_X}"><rdf:RDF xmlns:rdf="{_RDF}">'
            f'<rdf:Description rdf:about="" xmlns:dreamlayer="{XMP_NAMESPACE}">'
            f'<dreamlayer:scene>{text}</dreamlayer:scene>'
            f'</rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>').encode()


def _check(raw: Any) -> dict[str, Any]:
    """The record, its fields checked; DataError naming the first bad one."""
    if not isinstance(raw, dict) or "dreamlayer_scene" not in raw:
        raise DataError("not a dreamlayer scene record")
    if raw["dreamlayer_scene"] != RECORD_VERSION:
        raise DataError(f"record version {raw['dreamlayer_scene']!r} is not {RECORD_VERSION}")
    background = raw.get("background")
    if not isinstance(raw.get("prompt"), str) or not isinstance(background, dict) or not all(
            isinstance(background.get(key), str) for key in ("prompt", "name")):
        raise DataError("'prompt' and 'background' {prompt, name} must be strings")
    layers = raw.get("layers")
    if not isinstance(layers, list):
        raise DataError("'layers' must be a list")
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict) or not all(
                isinstance(layer.get(key), str) for key in ("prompt", "name")):
            raise DataError(f"layers[{index}] needs string 'prompt' and 'name'")
        area = layer.get("area")
        if area is not None and (not isinstance(area, list) or len(area) != 4
                                 or not all(isinstance(v, int) for v in area)):
            raise DataError(f"layers[{index}].area must be 4 integers or null")
        if layer.get("box") is not None:
            layer["box"] = validate_box(layer["box"], f"layers[{index}].box")
    return raw


def read_record(data: bytes | None, xmp: bool, notes: list[str]) -> dict[str, Any] | None:
    """The record in `data` (a PSD's XMP packet when `xmp`, else an ORA's JSON entry),
    or None when there is none. A damaged record is never fatal: it is left out with
    a note in `notes` (the file then imports as a file from any other program)."""
    if not data:
        return None
    try:
        if xmp:
            try:
                root = ET.fromstring(data)
            except ET.ParseError as exc:
                raise DataError(f"unreadable XMP ({exc})") from exc
            text = None
            for element in root.iter():
                if element.tag == f"{{{XMP_NAMESPACE}}}scene":
                    text = element.text
                    break
                text = element.get(f"{{{XMP_NAMESPACE}}}scene", text)  # attribute form
            if text is None:
                return None
            data = text.encode("utf-8")
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"not valid JSON ({exc})") from exc
        return _check(raw)
    except DataError as exc:
        notes.append(f"embedded scene ignored: {exc}")
        return None

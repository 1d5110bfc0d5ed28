"""What the app asks of the pipeline: requests checked up front, then run as jobs.

Each `prepare_*` reads a request body (a JSON object from the page), checks it with
the package's own validation (`Scene`, `DreamLayerPipeline`'s argument checks,
`edit.edit_stack`, `decompose.load_image`) so that bad input is answered at once, and
returns a function the job queue runs later; that function writes the result with
`LayeredResult.save` into a new folder of the working folder and returns its id.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from typing import Any

from dreamlayer_jax.app.storage import Workdir
from dreamlayer_jax.errors import InputError
from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline
from dreamlayer_jax.pipeline.edit_ops import Delete, EditOp, Flip, Move, Reorder, Reprompt, ScaleOp
from dreamlayer_jax.pipeline.scene import Layer, Scene
from dreamlayer_jax.schedulers.config import resolve_kind

MAX_STEPS = 1000
Run = Callable[[], str]


def _get(raw: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = raw.get(key, default)
    if value is None:
        return default
    if kind is bool:
        if not isinstance(value, bool):
            raise InputError(f"{key} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise InputError(f"{key} must be a whole number, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise InputError(f"{key} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise InputError(f"{key} must be text, got {value!r}")
    return value


def _body(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InputError("the request must be a JSON object")
    return raw


def sampling_settings(pipe: DreamLayerPipeline, raw: dict[str, Any]) -> dict[str, Any]:
    """Steps, guidance, seed, scheduler and the CACA / LSSA / IRH switches."""
    steps = _get(raw, "steps", int, 30)
    if not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    seed = _get(raw, "seed", int, 0)
    if not 0 <= seed < 2**31:
        raise InputError(f"seed must be between 0 and {2**31 - 1}, got {seed}")
    scheduler = _get(raw, "scheduler", str, "") or None
    if scheduler is not None:
        scheduler = resolve_kind(scheduler)
    return {"num_inference_steps": steps, "guidance_scale": _get(raw, "guidance", float, 5.0),
            "seed": seed, "scheduler": scheduler, "caca": _get(raw, "caca", bool, True),
            "lssa": _get(raw, "lssa", bool, True), "irh": _get(raw, "irh", bool, True)}


def read_scene(pipe: DreamLayerPipeline, raw: Any) -> Scene:
    """The scene of a request (scene.json's layout), checked against the model."""
    scene = Scene.from_dict(raw, source="scene")
    scene.check_fits(pipe.max_foregrounds)
    if pipe.config.variant != "paper" and scene.boxless:
        missing = ", ".join(str(i) for i in scene.boxless)
        raise InputError(f"foreground {missing} has no box: this model (box variant) places "
                         "every foreground in a box; draw one on the canvas")
    return scene


def _label(scene: Scene) -> str:
    return scene.prompt if len(scene.prompt) <= 80 else scene.prompt[:77] + "..."


def _save(workdir: Workdir, result: Any) -> str:
    rid, path = workdir.new_result_dir()
    result.save(path)
    return rid


def prepare_generate(pipe: DreamLayerPipeline, workdir: Workdir, raw: Any) -> tuple[str, Run]:
    raw = _body(raw)
    scene = read_scene(pipe, raw.get("scene"))
    settings = sampling_settings(pipe, raw)
    pipe._check_sampling_args([scene], settings["num_inference_steps"],
                              settings["guidance_scale"], [settings["seed"]])

    def run() -> str:
        result = pipe(scene, progress=True, **settings)
        return _save(workdir, result)

    return _label(scene), run


def read_ops(raw: Any) -> list[EditOp]:
    """The page's edit operations: `{"op": "move", "index": 1, "dx": 0.1, "dy": 0}`, ...
    (`scale` with `factor`, `flip`, `delete`, `reprompt` with `prompt`, `order` with a
    list `order`); indices are the saved scene's, from 1."""
    if not isinstance(raw, list):
        raise InputError("ops must be a list of edit operations")
    ops: list[EditOp] = []
    for item in raw:
        if not isinstance(item, dict):
            raise InputError(f"an edit operation must be an object, got {item!r}")
        kind = item.get("op")
        if kind == "order":
            order = item.get("order")
            if not isinstance(order, list) or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in order):
                raise InputError(f"order must be a list of layer numbers, got {order!r}")
            ops.append(Reorder(tuple(order)))
            continue
        index = _get(item, "index", int, 0)
        if index < 1:
            raise InputError(f"{kind}: layer numbers start at 1, got {index}")
        if kind == "move":
            ops.append(Move(index, _get(item, "dx", float, 0.0), _get(item, "dy", float, 0.0)))
        elif kind == "scale":
            factor = _get(item, "factor", float, 1.0)
            if factor <= 0:
                raise InputError(f"scale {index}: the factor must be positive, got {factor}")
            ops.append(ScaleOp(index, factor))
        elif kind == "flip":
            ops.append(Flip(index))
        elif kind == "delete":
            ops.append(Delete(index))
        elif kind == "reprompt":
            text = _get(item, "prompt", str, "").strip()
            if not text:
                raise InputError(f"reprompt {index}: the new prompt is empty")
            ops.append(Reprompt(index, text))
        else:
            raise InputError(f"unknown edit operation {kind!r}")
    return ops


def prepare_edit(pipe: DreamLayerPipeline, workdir: Workdir, raw: Any) -> tuple[str, Run]:
    from dreamlayer_jax.cli.sample_edit import updated_prompt
    from dreamlayer_jax.pipeline.edit import edit, edit_stack, load_saved

    raw = _body(raw)
    rid = _get(raw, "result", str, "")
    saved_dir = workdir.result_dir(rid)
    ops = read_ops(raw.get("ops", []))
    prompt = _get(raw, "prompt", str, "").strip()
    if not ops and not prompt:
        raise InputError("nothing to edit: move, scale, flip, delete, reorder or reprompt a "
                         "layer first")
    scene, latents, _ = load_saved(pipe, saved_dir)
    new_scene = edit_stack(pipe, scene, latents, ops).scene  # bad operations fail here
    prompt = prompt or updated_prompt(scene, new_scene, ops)
    steps = raw.get("steps")
    if steps is not None:
        steps = sampling_settings(pipe, {"steps": steps})["num_inference_steps"]

    def run() -> str:
        source = workdir.scratch()
        try:
            record = json.loads((saved_dir / "scene.json").read_text(encoding="utf-8"))
            record["prompt"] = prompt  # the edit reads the global prompt from scene.json
            (source / "scene.json").write_text(json.dumps(record, indent=2) + "\n")
            shutil.copy2(saved_dir / "latents.safetensors", source / "latents.safetensors")
            result = edit(pipe, source, ops, None, num_inference_steps=steps, progress=True)
        finally:
            workdir.remove(source)
        result.info["edited_from"] = rid
        return _save(workdir, result)

    return f"edit of {_label(scene)}: " + ", ".join(_op_words(op) for op in ops), run


def _op_words(op: EditOp) -> str:
    return type(op).__name__.lower().replace("scaleop", "scale")


def prepare_decompose(pipe: DreamLayerPipeline, workdir: Workdir, raw: Any
                      ) -> tuple[str, Run]:
    from dreamlayer_jax.pipeline.decompose import decompose

    raw = _body(raw)
    picture = workdir.upload_path(_get(raw, "upload", str, ""))
    scene = Scene.from_dict(raw.get("scene"), source="scene")
    scene.check_fits(pipe.max_foregrounds)
    settings = sampling_settings(pipe, raw)
    for key in ("scheduler", "irh"):  # decomposition inverts with DDIM; IRH is its own
        settings.pop(key)
    pipe._check_sampling_args([scene], settings["num_inference_steps"],
                              settings["guidance_scale"], [settings["seed"]])
    prompt = scene.prompt if raw.get("scene", {}).get("prompt") else None
    layers = tuple(Layer(layer.prompt, layer.box) for layer in scene.layers)

    def run() -> str:
        result = decompose(pipe, picture, layers, background=scene.background, prompt=prompt,
                           progress=True, **settings)
        result.info["decomposed"] = "upload"
        return _save(workdir, result)

    return f"decompose into {_label(scene)}", run


def import_saved(pipe: DreamLayerPipeline, workdir: Workdir, files: dict[str, bytes]
                 ) -> dict[str, Any]:
    """Open a saved result (its scene.json and latents.safetensors, the rest ignored)
    as a new result of this app, or a scene.json alone as a scene to compose from."""
    from dreamlayer_jax.pipeline.edit import load_saved

    if "scene.json" not in files:
        raise InputError("no scene.json among the files: open a scene.json, a result folder "
                         "or a result's .zip")
    try:
        record = json.loads(files["scene.json"].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"scene.json is not valid JSON: {exc}") from exc
    scene = Scene.from_dict(record, source="scene.json")
    if "latents.safetensors" not in files:
        return {"scene": scene.to_dict()}
    folder = workdir.scratch()
    try:
        (folder / "scene.json").write_bytes(files["scene.json"])
        (folder / "latents.safetensors").write_bytes(files["latents.safetensors"])
        scene, latents, info = load_saved(pipe, folder)
        ctx, _ = pipe.layer_context([scene], caca=bool(info.get("caca", True)),
                                    lssa=bool(info.get("lssa", True)))
        keep = {k: v for k, v in info.items()
                if k not in ("prompt", "background", "layers", "composite", "model_path")}
        if "seed" in keep:  # to_results takes one seed per scene of the batch
            keep["seed"] = [keep["seed"]]
        result = pipe.to_results([scene], latents[None], ctx, {**keep, "opened": True})[0]
    finally:
        workdir.remove(folder)
    return {"scene": scene.to_dict(), "result": _save(workdir, result)}

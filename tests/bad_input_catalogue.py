"""The catalogue of bad inputs that tests/test_bad_inputs.py runs: each case is a tool, its
arguments (built in the case's world, tests/bad_input_world.py) and the words its one
error line must contain; `ACCEPTED` lists the inputs that must succeed instead."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bad_input_world import (
    ROOT,
    Ctx,
    checkpoint_of_another_model,
    drop_tensor,
    edit_json,
    layered_file,
    png,
    remove,
    truncate,
)
from PIL import Image

TINY_CONFIG = ROOT / "configs" / "tiny.py"


@dataclass(frozen=True)
class Case:
    """`tool args(ctx)` must fail with exit code 2 and one stderr line containing `expect`
    (in `ACCEPTED`: must succeed, its stderr containing `expect`).

    `slow`: it takes seconds, not milliseconds (jax is imported, the model loads): it
    runs in the background. `after`: start only once that case is done (to reuse its
    compiled program from the persistent compilation cache instead of compiling twice).
    """

    id: str
    tool: str
    args: Callable[[Ctx], list]
    expect: str
    slow: bool = False
    after: str | None = None


def gen(*extra: str, out: Callable[[Ctx], Path] | None = None,
        model: Callable[[Ctx], Path] | None = None) -> Callable[[Ctx], list]:
    """`sample.py` generate with a good prompt and background plus `extra` (and the output
    folder or model path that `out(ctx)` / `model(ctx)` give, if given)."""
    return lambda c: ["--model", model(c) if model else c.model, "--prompt", "a red star",
                      "--background", "a blue wall", "--out", out(c) if out else c.out,
                      "--no-progress", *extra]


def gen_model(damage: Callable[[Path], None]) -> Callable[[Ctx], list]:
    return lambda c: ["--model", c.broken_model(damage), "--prompt", "a red star",
                      "--background", "a blue wall", "--layer", "a red star@0.1,0.1,0.5,0.5",
                      "--steps", "1", "--out", c.out, "--no-progress"]


def scene_file(content: str | dict) -> Callable[[Ctx], list]:
    text = content if isinstance(content, str) else json.dumps(content)
    return lambda c: ["--model", c.model, "--scene", c.write("scene.json", text),
                      "--out", c.out]


def decompose(image: Callable[[Ctx], Path], *extra: str) -> Callable[[Ctx], list]:
    return lambda c: ["decompose", image(c), "--background", "a blue wall", "--model",
                      c.model, "--steps", "1", "--out", c.out, "--no-progress", *extra]


def edit(*ops: str, folder: Callable[[Ctx], Path] = Ctx.saved_result) -> Callable[[Ctx], list]:
    return lambda c: ["edit", folder(c), "--model", c.model, "--steps", "1", "--out", c.out,
                      *ops]


def train(*sets: str, config: Callable[[Ctx], Path] = lambda c: TINY_CONFIG,
          resume: bool = False) -> Callable[[Ctx], list]:
    return lambda c: ["--config", config(c), "--workdir", c.work,
                      *(["--resume"] if resume else []),
                      *(a for s in sets for a in ("--set", s.format(model=c.model)))]


def _resume_from_another_model(ctx: Ctx) -> list:
    checkpoint_of_another_model(ctx)
    return train("model={model}", "num_steps=2", "progress=False", resume=True)(ctx)


def _used_workdir(ctx: Ctx) -> list:
    """A workdir holding an earlier run's checkpoint (its contents do not matter here)."""
    (ctx.work / "checkpoints" / "2").mkdir(parents=True)
    return train("model={model}")(ctx)


BOX = "a red star@{}"
CASES = [
    # boxes
    Case("box-outside-unit-square", "sample", gen("--layer", BOX.format("0.1,0.1,1.6,0.6")),
         "box values must lie in [0, 1]"),
    Case("box-negative", "sample", gen("--layer", BOX.format("-0.2,0.1,0.5,0.6")),
         "box values must lie in [0, 1]"),
    Case("box-zero-area", "sample", gen("--layer", BOX.format("0.3,0.3,0.3,0.6")),
         "positive area"),
    Case("box-inverted", "sample", gen("--layer", BOX.format("0.5,0.5,0.2,0.9")),
         "positive area"),
    Case("box-not-numbers", "sample", gen("--layer", BOX.format("0.1,0.1,zero,0.6")),
         "must be four numbers"),
    Case("box-three-numbers", "sample", gen("--layer", BOX.format("0.1,0.1,0.6")),
         "must be four numbers"),
    Case("box-nan", "sample", gen("--layer", BOX.format("nan,0.1,0.5,0.6")),
         "box values must be finite"),
    # prompts and the scene
    Case("empty-prompt", "sample",
         lambda c: ["--prompt", "", "--background", "a blue wall", "--out", c.out],
         "prompt must be a non-empty string"),
    Case("blank-layer-prompt", "sample", gen("--layer", "   @0.1,0.1,0.5,0.5"),
         "layer 1 prompt must be a non-empty string"),
    Case("background-missing", "sample", lambda c: ["--prompt", "a red star", "--out", c.out],
         "--background is needed with --prompt or --layer"),
    Case("layer-without-box-box-variant", "sample", gen("--layer", "a red star"),
         "foreground 1 ('a red star') has no box, and this model (box variant)", slow=True),
    Case("too-many-foregrounds", "sample",
         gen(*(a for p in ("a red star", "a green ring", "a blue square", "a pink cross")
               for a in ("--layer", p))),
         "the scene has 4 foreground layers but the model supports at most 3", slow=True),
    Case("scene-not-json", "sample", scene_file("{'prompt': 'a red star',"),
         "is not valid JSON"),
    Case("scene-missing-background", "sample", scene_file({"prompt": "a red star"}),
         "missing field 'background'"),
    Case("scene-layers-malformed", "sample",
         scene_file({"prompt": "a red star", "background": "a blue wall", "layers": 5}),
         "malformed layers"),
    Case("scene-file-missing", "sample",
         lambda c: ["--scene", c.tmp / "nope.json", "--out", c.out], "cannot read scene file"),
    Case("scene-and-prompt", "sample",
         lambda c: ["--scene", c.write("scene.json", "{}"), "--prompt", "a", "--out", c.out],
         "--scene cannot be combined"),
    # sampling settings
    Case("steps-not-numeric", "sample", gen("--steps", "many"),
         "argument --steps: invalid int value: 'many'"),
    Case("steps-zero", "sample", gen("--steps", "0"), "--steps must be a positive integer"),
    Case("steps-negative", "sample", gen("--steps=-3"), "--steps must be a positive integer"),
    Case("guidance-negative", "sample", gen("--guidance=-2"), "--guidance must be >= 0"),
    Case("guidance-nan", "sample", gen("--guidance", "nan"), "--guidance must be >= 0"),
    Case("irh-start-above-one", "sample", gen("--irh-start", "1.5"),
         "--irh-start must be in [0, 1]"),
    Case("irh-stop-above-restart", "sample", gen("--irh-restart", "400", "--irh-stop", "600"),
         "--irh-stop 600 (T_H') must not exceed --irh-restart 400 (T_H)"),
    Case("unknown-flag", "sample", gen("--colour", "red"), "unrecognized arguments: --colour"),
    # the output folder
    Case("out-is-a-file", "sample", gen(out=lambda c: c.write("out", "not a folder")),
         "exists and is not a folder"),
    Case("out-not-empty", "sample", gen(out=lambda c: c.write("out/old.txt", "x").parent),
         "is not empty"),
    Case("out-unwritable", "sample", gen(out=Ctx.unwritable_folder), "is not writable"),
    # the model folder
    Case("model-missing", "sample", gen(model=lambda c: c.tmp / "nope"),
         "does not exist", slow=True),
    Case("model-is-a-file", "sample", gen(model=lambda c: c.write("model.bin", b"\0")),
         "is a file, expected a folder", slow=True),
    Case("model-without-unet", "sample", gen_model(remove("unet")),
         "has no 'unet' sub-folder", slow=True),
    Case("model-missing-tensor", "sample", gen_model(drop_tensor),
         "weights do not fit the model: 1 missing: conv_in.weight", slow=True),
    Case("model-truncated-safetensors", "sample",
         gen_model(truncate("unet/diffusion_pytorch_model.safetensors")),
         "cannot read weights file", slow=True),
    Case("model-unet-config-not-json", "sample",
         gen_model(lambda f: (f / "unet" / "config.json").write_text("{")),
         "is not valid JSON", slow=True),
    Case("scheduler-unknown-class", "sample",
         gen_model(edit_json("scheduler/scheduler_config.json", _class_name="MagicScheduler")),
         "unknown scheduler 'MagicScheduler'", slow=True),
    # decompose
    Case("decompose-not-an-image", "sample",
         decompose(lambda c: c.write("picture.png", "this is text, not a PNG")),
         "not a readable image"),
    Case("decompose-image-missing", "sample", decompose(lambda c: c.tmp / "nope.png"),
         "does not exist"),
    Case("decompose-negative-eta", "sample",
         decompose(lambda c: c.write("p.png", png(np.zeros((8, 8, 3), np.uint8))),
                   "--eta", "-0.5"), "--eta must be >= 0"),
    Case("decompose-without-background", "sample",
         lambda c: ["decompose", c.write("p.png", png(np.zeros((8, 8, 3), np.uint8))),
                    "--out", c.out], "the following arguments are required: --background"),
    # edit
    Case("edit-nothing-to-do", "sample", edit(), "nothing to do", slow=True),
    Case("edit-move-syntax", "sample", edit("--move", "1:0.1"), "expected 'INDEX:DX,DY'",
         slow=True),
    Case("edit-layer-zero", "sample", edit("--delete", "0"), "layer indices start at 1",
         slow=True),
    Case("edit-layer-does-not-exist", "sample", edit("--delete", "5"),
         "layer 5 does not exist", slow=True),
    Case("edit-move-leaves-canvas", "sample", edit("--move", "1:+0.9,0"),
         "would leave the canvas", slow=True),
    Case("edit-not-a-result", "sample",
         edit("--delete", "1", folder=lambda c: c.write("plain/notes.txt", "hi").parent),
         "has no latents.safetensors", slow=True),
    # train
    Case("train-workdir-missing", "train", lambda c: ["--config", TINY_CONFIG],
         "the following arguments are required: --workdir"),
    Case("train-config-missing", "train", train(config=lambda c: c.tmp / "nope.py"),
         "does not exist"),
    Case("train-config-broken", "train",
         train(config=lambda c: c.write("broken.py", "def get_config(:\n")), "failed to load"),
    Case("train-unknown-key", "train", train("nmu_steps=3"), "unknown keys ['nmu_steps']"),
    Case("train-bad-value", "train", train("batch_size=0"), "batch_size=0 must be >= 1"),
    Case("train-set-syntax", "train", train("batch_size"), "--set expects key=value"),
    Case("train-no-model", "train", train(), "model (the base model folder) is required",
         slow=True),
    Case("train-model-missing", "train", train("model=/no/such/model"), "does not exist",
         slow=True),
    Case("train-resume-other-model", "train", _resume_from_another_model,
         "made for another model/config): User-provided restore item and on-disk value "
         "metadata tree structures do not match: ema.unet.down_blocks.0", slow=True),
    Case("train-used-workdir", "train", _used_workdir,
         "holds an earlier run (checkpoints up to step 2): pass --resume", slow=True),
    Case("train-resume-and-overwrite", "train",
         lambda c: [*train("model={model}")(c), "--resume", "--overwrite"], "contradict"),
    Case("edit-another-model", "sample",
         lambda c: ["edit", c.saved_result(), "--model", "builtin", "--steps", "1", "--out",
                    c.out, "--delete", "1"], "another model; pass that one with --model",
         slow=True),
    # init_model, build_dataset
    Case("init-sd-config-without-base", "init",
         lambda c: [ROOT / "configs" / "sd15.py", c.out], "pass --base SD_FOLDER"),
    Case("dataset-nothing-to-build", "dataset", lambda c: ["--out", c.out],
         "nothing to build"),
    Case("dataset-source-missing", "dataset", lambda c: [c.tmp / "nope", "--out", c.out],
         "does not exist"),
    # import
    Case("import-no-files", "import", lambda c: ["--out", c.out],
         "the following arguments are required: FILE"),
    Case("import-nothing-readable", "import",
         lambda c: [layered_file(c, "bad.ora", corrupt=True), c.write("x.psd", b"8BPS"),
                    "--out", c.out], "no layered file could be imported"),
    Case("import-out-is-a-file", "import",
         lambda c: [layered_file(c, "good.ora"), "--out", c.write("out", "x")],
         "exists and is not a folder"),
]


# Accepted on purpose: these must succeed (exit code 0) and say what they did.
def _long_prompt(ctx: Ctx) -> list:
    prompt = " ".join(["a small red star"] * 12)  # 48 words; the tiny tokenizer keeps 32
    return ["--model", ctx.model, "--prompt", prompt, "--background", "a blue wall",
            "--layer", "a red star@0.1,0.1,0.5,0.5", "--steps", "1", "--out", ctx.out,
            "--no-progress"]


def _grey16(ctx: Ctx) -> Path:
    ramp = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    path = ctx.tmp / "grey16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16")
    return path


def _palette(ctx: Ctx) -> Path:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, 4:] = (200, 30, 30)
    path = ctx.tmp / "palette.png"
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(path)
    assert Image.open(path).mode == "P"
    return path


def _dataset_with_a_corrupt_file(ctx: Ctx) -> list:
    layered_file(ctx, "good.ora")
    layered_file(ctx, "bad.ora", corrupt=True)
    return [ctx.tmp / "data", "--out", ctx.out]


ACCEPTED = [
    Case("over-long-prompt-truncated", "sample", _long_prompt,
         "warning: prompt truncated to 32 tokens", slow=True),
    Case("decompose-16-bit-png", "sample", decompose(_grey16, "--layer", BOX.format(".1,.1,.5,.5")),
         "warning: image of size 16x16 resized to the model's 8x8", slow=True),
    Case("decompose-palette-png", "sample",
         decompose(_palette, "--layer", BOX.format(".1,.1,.5,.5")), "", slow=True,
         after="decompose-16-bit-png"),
    Case("import-corrupt-file-skipped", "import", _dataset_with_a_corrupt_file,
         "warning: skipped"),
]
ALL_CASES = {c.id: c for c in CASES + ACCEPTED}

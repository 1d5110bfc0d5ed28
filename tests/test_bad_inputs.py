"""The catalogue of bad inputs, run through the real command-line tools in subprocesses.

Every bad input must end with exit code 2, exactly one line on stderr that starts with
"error:" and names the problem, and no new file anywhere in the case's folder (the output
folder included). A few inputs are *accepted* on purpose (an over-long prompt is
truncated with a warning; 16-bit and palette PNGs are converted; a corrupt file in a
dataset is skipped and counted): those cases must succeed. docs/RELIABILITY.md lists
them all.

Cases that fail before jax is imported take well under a second. The `slow` ones (jax,
the model, a sampler compile) run two at a time in a background pool started by the
module's first test, so that the module stays short on a 2-core machine; each is still
asserted by its own test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from child_env import one_device_env
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = ROOT / "configs" / "tiny.py"
COMMANDS = {
    "sample": [sys.executable, str(ROOT / "sample.py")],
    "train": [sys.executable, str(ROOT / "train.py")],
    "import": [sys.executable, "-m", "dreamlayer_jax.cli.import_layers"],
    "init": [sys.executable, "-m", "dreamlayer_jax.cli.init_model"],
    "dataset": [sys.executable, "-m", "dreamlayer_jax.cli.build_dataset"],
}
# one CPU device; the matmul precision of tests/conftest.py (one compile cache)
ENV = one_device_env(PYTHONPATH=str(ROOT), JAX_DEFAULT_MATMUL_PRECISION="highest")


# -- the case's world: a folder, the tiny model, and ways to break things --------------
@dataclass
class Ctx:
    """One case's folder `tmp` (also the working directory) and the shared tiny model."""

    tmp: Path
    model: Path

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    @property
    def work(self) -> Path:
        return self.tmp / "work"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def broken_model(self, damage: Callable[[Path], None]) -> Path:
        """A copy of the tiny model folder, damaged by `damage(folder)`."""
        copy = self.tmp / "model"
        shutil.copytree(self.model, copy)
        damage(copy)
        return copy

    def saved_result(self, num_layers: int = 2) -> Path:
        """A folder as `sample.py` writes it (random pictures and latents, no sampling)."""
        from dreamlayer_jax.pipeline.result import LayeredResult
        from dreamlayer_jax.pipeline.scene import Layer, Scene

        rng = np.random.default_rng(0)
        scene = Scene("a red star and a green ring in front of a blue wall", "a blue wall",
                      tuple(Layer(p, (0.1, 0.1, 0.5, 0.5))
                            for p in ("a red star", "a green ring")[:num_layers]))
        result = LayeredResult(
            scene=scene, background=rng.integers(0, 256, (8, 8, 3), np.uint8),
            layers=[rng.integers(0, 256, (8, 8, 4), np.uint8) for _ in range(num_layers)],
            composite=rng.integers(0, 256, (8, 8, 3), np.uint8),
            latents=rng.normal(size=(num_layers + 2, 8, 8, 4)).astype(np.float32))
        return result.save(self.tmp / "saved")

    def unwritable_folder(self) -> Path:
        """A folder nobody may write into: chmod 0o500, or (as root, whom chmod does not
        stop) a path under /proc, where no process can create files."""
        folder = self.tmp / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        probe = folder / "probe"
        try:
            probe.mkdir()
        except OSError:
            return folder / "out"
        probe.rmdir()
        folder.chmod(0o700)
        if not Path("/proc/self").is_dir():
            pytest.skip("running as root (chmod does not stop writes) and no /proc")
        return Path("/proc/dreamlayer-no-such-folder/out")


def _remove(relative: str) -> Callable[[Path], None]:
    return lambda folder: (shutil.rmtree if (folder / relative).is_dir() else os.remove)(
        folder / relative)


def _truncate(relative: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / relative
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return damage


def _drop_tensor(folder: Path) -> None:
    from safetensors.numpy import load_file, save_file

    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    del state["conv_in.weight"]
    save_file(state, str(path))


def _edit_json(relative: str, **changes) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        path = folder / relative
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return damage


def _png(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _layered_file(ctx: Ctx, name: str, corrupt: bool = False) -> Path:
    """A small OpenRaster file; `corrupt` garbles its foreground's PNG inside the zip."""
    import zipfile

    from dreamlayer_jax.io.layered_files import write_ora

    rng = np.random.default_rng(1)
    background = rng.integers(0, 256, (16, 16, 3), np.uint8)
    layer = np.zeros((16, 16, 4), np.uint8)
    layer[4:10, 3:12] = (200, 30, 30, 255)
    path = write_ora(ctx.tmp / "data" / name, background, [layer], ["a blue wall", "a red star"])
    if corrupt:
        with zipfile.ZipFile(path) as zin:
            items = {n: zin.read(n) for n in zin.namelist()}
        items["data/layer001.png"] = items["data/layer001.png"][:40] + b"\0garbage" * 8
        with zipfile.ZipFile(path, "w") as zout:
            for n, data in items.items():
                zout.writestr(n, data)
    return path


def _checkpoint_of_another_model(ctx: Ctx) -> Path:
    """`work/checkpoints/1`: the train state of a UNet with one level fewer than the tiny
    model's (a checkpoint of the same tree with other shapes is refused the same way)."""
    import jax
    from flax import nnx
    from tiny_model import TINY_UNET

    from dreamlayer_jax.models.layer_unet import DreamLayerConfig, DreamLayerUNet
    from dreamlayer_jax.models.unet import UNet2DConditionModel
    from dreamlayer_jax.models.unet_config import UNetConfig
    from dreamlayer_jax.training.checkpoint import Checkpointer
    from dreamlayer_jax.training.config import TrainConfig
    from dreamlayer_jax.training.optimizer import make_optimizer
    from dreamlayer_jax.training.state import init_train_state

    config = UNetConfig.from_dict({**TINY_UNET, "block_out_channels": [16],
                                   "down_block_types": ["CrossAttnDownBlock2D"],
                                   "up_block_types": ["CrossAttnUpBlock2D"]})
    abstract = nnx.eval_shape(lambda: DreamLayerUNet(
        UNet2DConditionModel(config, rngs=nnx.Rngs(0)),
        DreamLayerConfig(max_layers=5, codec="pixel", resolution=8), rngs=nnx.Rngs(0)))
    params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                          nnx.to_pure_dict(nnx.state(abstract)))
    tx = make_optimizer(TrainConfig(model="other"), params)
    ckpt = Checkpointer(ctx.work, async_save=False)
    ckpt.save(1, init_train_state(params, tx, 0), {}, {})
    ckpt.close()
    return ctx.work


# -- the catalogue ---------------------------------------------------------------------
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
    _checkpoint_of_another_model(ctx)
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
    Case("model-without-unet", "sample", gen_model(_remove("unet")),
         "has no 'unet' sub-folder", slow=True),
    Case("model-missing-tensor", "sample", gen_model(_drop_tensor),
         "weights do not fit the model: 1 missing: conv_in.weight", slow=True),
    Case("model-truncated-safetensors", "sample",
         gen_model(_truncate("unet/diffusion_pytorch_model.safetensors")),
         "cannot read weights file", slow=True),
    Case("model-unet-config-not-json", "sample",
         gen_model(lambda f: (f / "unet" / "config.json").write_text("{")),
         "is not valid JSON", slow=True),
    Case("scheduler-unknown-class", "sample",
         gen_model(_edit_json("scheduler/scheduler_config.json", _class_name="MagicScheduler")),
         "unknown scheduler 'MagicScheduler'", slow=True),
    # decompose
    Case("decompose-not-an-image", "sample",
         decompose(lambda c: c.write("picture.png", "this is text, not a PNG")),
         "not a readable image"),
    Case("decompose-image-missing", "sample", decompose(lambda c: c.tmp / "nope.png"),
         "does not exist"),
    Case("decompose-negative-eta", "sample",
         decompose(lambda c: c.write("p.png", _png(np.zeros((8, 8, 3), np.uint8))),
                   "--eta", "-0.5"), "--eta must be >= 0"),
    Case("decompose-without-background", "sample",
         lambda c: ["decompose", c.write("p.png", _png(np.zeros((8, 8, 3), np.uint8))),
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
         lambda c: [_layered_file(c, "bad.ora", corrupt=True), c.write("x.psd", b"8BPS"),
                    "--out", c.out], "no layered file could be imported"),
    Case("import-out-is-a-file", "import",
         lambda c: [_layered_file(c, "good.ora"), "--out", c.write("out", "x")],
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
    _layered_file(ctx, "good.ora")
    _layered_file(ctx, "bad.ora", corrupt=True)
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


# -- running ---------------------------------------------------------------------------
def run_tool(tool: str, args: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMANDS[tool], *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*")) if folder.exists() else set()


Outcome = tuple[subprocess.CompletedProcess, set[Path], Ctx]


def _run_case(case: Case, ctx: Ctx) -> Outcome:
    ctx.tmp.mkdir(parents=True, exist_ok=True)
    args = case.args(ctx)
    before = _files(ctx.tmp)
    return run_tool(case.tool, args, ctx.tmp), before, ctx


class SlowRunner:
    """Runs the selected slow cases two at a time in the background, in collection order,
    from the moment the module's first test starts (each is asserted by its own test)."""

    def __init__(self, model: Path, root: Path, selected: list[str]) -> None:
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.model, self.root = model, root
        self.futures: dict[str, Future] = {}
        for case_id in selected:
            self.submit(ALL_CASES[case_id])

    def submit(self, case: Case) -> Future:
        if case.id not in self.futures:
            before = self.submit(ALL_CASES[case.after]) if case.after else None
            ctx = Ctx(self.root / case.id, self.model)
            self.futures[case.id] = self.pool.submit(self._run, case, ctx, before)
        return self.futures[case.id]

    @staticmethod
    def _run(case: Case, ctx: Ctx, before: Future | None) -> Outcome:
        if before is not None:
            before.exception()  # wait; its own test reports its failure
        return _run_case(case, ctx)


@pytest.fixture(scope="module")
def runner(request, tiny_model_dir, tmp_path_factory):
    # Under xdist's default distribution other workers may run some of these cases: then
    # start only those asked for. Otherwise start every selected slow case of the module.
    selected = []
    if os.environ.get("PYTEST_XDIST_WORKER") is None or request.config.getoption(
            "dist", "no") in ("loadfile", "loadscope"):
        for item in request.session.items:
            params = getattr(item, "callspec", None) and item.callspec.params
            if (item.module is request.module and params and "case" in params
                    and params["case"].slow):
                selected.append(params["case"].id)
    pool = SlowRunner(tiny_model_dir, tmp_path_factory.mktemp("slow"), selected)
    yield pool
    pool.pool.shutdown(wait=True, cancel_futures=True)


def outcome(case: Case, runner: SlowRunner, tmp_path: Path) -> Outcome:
    if case.slow:
        return runner.submit(case).result()
    return _run_case(case, Ctx(tmp_path / "case", runner.model))


def test_nan_in_sampled_latents_is_refused_before_any_file_is_written(
        runner, tiny_pipe, tmp_path, monkeypatch, capsys):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from dreamlayer_jax.cli.sample import main
    from dreamlayer_jax.pipeline.dreamlayer import DreamLayerPipeline

    graph, params = nnx.split(tiny_pipe.unet)
    poisoned = nnx.merge(graph, jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), params))
    pipe = DreamLayerPipeline(poisoned, tiny_pipe.conditioner, tiny_pipe.codec,
                              tiny_pipe.scheduler)
    monkeypatch.setattr(DreamLayerPipeline, "from_pretrained",
                        classmethod(lambda cls, *args, **kwargs: pipe))
    out = tmp_path / "out"
    code = main(["--prompt", "a red star", "--background", "a blue wall", "--layer",
                 "a red star@0.1,0.1,0.5,0.5", "--steps", "1", "--out", str(out),
                 "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: the sampled latents contain NaN or Inf"), lines[0]
    assert "float32 or bfloat16" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_error_line_and_writes_nothing(case, runner, tmp_path):
    proc, before, ctx = outcome(case, runner, tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert case.expect in lines[0], lines[0]
    assert _files(ctx.tmp) == before, sorted(map(str, _files(ctx.tmp) - before))


@pytest.mark.parametrize("case", ACCEPTED, ids=[c.id for c in ACCEPTED])
def test_accepted_input_succeeds_and_says_what_it_did(case, runner, tmp_path):
    proc, _, ctx = outcome(case, runner, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # (jax may log compilation-cache warnings here; only our own error lines matter)
    assert not any(line.startswith("error") for line in proc.stderr.splitlines()), proc.stderr
    assert case.expect in proc.stderr, proc.stderr[-3000:]
    assert str(ctx.out) in proc.stdout
    if case.tool == "import":
        assert "loaded 1, skipped 1" in proc.stdout and "bad.ora" in proc.stderr
        assert sorted(p.name for p in ctx.out.iterdir()) == ["good"]
        assert (ctx.out / "good" / "scene.json").is_file()
    else:
        assert {"background.png", "layer_01.png", "composite.png", "scene.json",
                "latents.safetensors"} <= {p.name for p in ctx.out.iterdir()}


def test_catalogue_has_at_least_30_cases_covering_every_tool():
    assert len(CASES) >= 30 and len(ALL_CASES) == len(CASES) + len(ACCEPTED)
    assert {c.tool for c in CASES} == set(COMMANDS)

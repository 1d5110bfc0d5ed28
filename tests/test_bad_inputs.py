"""The catalogue of bad inputs (`bad_input_catalogue.py`), run through the real command-line
tools in subprocesses.

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

import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from bad_input_catalogue import ACCEPTED, ALL_CASES, CASES, Case
from bad_input_world import ROOT, Ctx
from child_env import one_device_env

COMMANDS = {
    "sample": [sys.executable, str(ROOT / "sample.py")],
    "train": [sys.executable, str(ROOT / "train.py")],
    "import": [sys.executable, "-m", "dreamlayer_jax.cli.import_layers"],
    "init": [sys.executable, "-m", "dreamlayer_jax.cli.init_model"],
    "dataset": [sys.executable, "-m", "dreamlayer_jax.cli.build_dataset"],
}
# one CPU device; the matmul precision of tests/conftest.py (one compile cache)
ENV = one_device_env(PYTHONPATH=str(ROOT), JAX_DEFAULT_MATMUL_PRECISION="highest")


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

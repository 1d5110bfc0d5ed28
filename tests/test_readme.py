"""Every command in README.md's `bash` blocks, run as written (so the README cannot drift).

The commands run in a temporary folder, each as its own subprocess, in two chains side
by side (the training lines, and the rest), each chain in README order. `python` is this
interpreter; `sample.py`, `train.py` and `configs/` are the repository's. Made cheap
without changing what they exercise: sampling, decomposing and editing get `--steps 2
--no-progress` appended, training `--set num_steps=2 ...` (`num_steps=3` when
resuming). Stand-ins: `PAPER_MODEL` is the tiny paper-variant model. Lines naming a real
Stable Diffusion folder (SD15_FOLDER, SDXL_FOLDER, SD_FOLDER) cannot run here: their
flags are parsed and their config loaded with every `--set` applied and its mesh fitted
to 1, 2 and 8 devices, then the test is skipped. `make` lines are dry runs (`make -n`).
The `python train.py` lines of the configs' docstrings are checked the same way.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from child_env import one_device_env

ROOT = Path(__file__).resolve().parent.parent
SD_FOLDERS = ("SD15_FOLDER", "SDXL_FOLDER", "SD_FOLDER")
CHEAP_SAMPLING = ["--steps", "2", "--no-progress"]
CHEAP_TRAINING = ["log_every=1", "checkpoint_every=1", "sample_every=0", "progress=False",
                  "synthetic_scenes=8"]


def shell_lines(text: str) -> list[str]:
    """The command lines of `text`'s ```bash blocks (continuations joined)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if shlex.split(line, comments=True):
                lines.append(line.strip())
    return lines


def docstring_lines(path: Path) -> list[str]:
    """The `python train.py` commands of a config file's docstring."""
    import ast

    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    doc = doc.replace("\\\n", " ")
    return [" ".join(line.split()) for line in doc.splitlines()
            if line.strip().startswith("python train.py")]


README_LINES = shell_lines((ROOT / "README.md").read_text())
CONFIG_LINES = [(p.name, line) for p in sorted((ROOT / "configs").glob("*.py"))
                for line in docstring_lines(p)]


def translate(words: list[str], paper_model: Path) -> list[str]:
    """A README command as this test runs it (module docstring)."""
    out = []
    for word in words:
        if word == "python":
            word = sys.executable
        elif word in ("sample.py", "train.py") or word.startswith("configs/"):
            word = str(ROOT / word)
        out.append(word.replace("PAPER_MODEL", str(paper_model)))
    script = words[1] if len(words) > 1 else ""
    if script == "sample.py":
        out += CHEAP_SAMPLING
    elif script == "train.py" and "--show-config" not in words:
        steps = 3 if "--resume" in words else 2
        out += ["--set", f"num_steps={steps}", *CHEAP_TRAINING]
    return out


def check_train_line(words: list[str]) -> None:
    """Parse a train.py command and load its config (placeholders stand in for paths)."""
    from dreamlayer_jax.cli.train import build_parser
    from dreamlayer_jax.training.config import fit_mesh, load_config_file

    words = [str(ROOT / w) if w.startswith("configs/") else w for w in words]
    args = build_parser().parse_args(words[2:])
    cfg = load_config_file(args.config, args.overrides)
    assert cfg.model and cfg.model != "", words
    for devices in (1, 2, 8):
        sizes, _ = fit_mesh(cfg.mesh, devices)
        assert sizes[0] * sizes[1] * sizes[2] == devices


def chain(line: str) -> int:
    """Which of the two sequential chains runs `line`: 1 for the training lines (they
    read and write runs/ and data/syn), 0 for the rest (they work on out/a and its
    products). The chains run side by side."""
    return int("runs/" in line or "data/syn" in line)


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory, tiny_paper_model_dir):
    """`{line: CompletedProcess | None}` of every runnable README line, each chain's
    lines in README order."""
    from concurrent.futures import ThreadPoolExecutor

    cwd = tmp_path_factory.mktemp("readme")
    env = one_device_env()

    def run_one(line: str) -> subprocess.CompletedProcess | None:
        words = shlex.split(line, comments=True)
        if any(name in line for name in SD_FOLDERS):
            return None
        if words[0] == "make":
            argv, where = ["make", "-n", *words[1:]], ROOT
        else:
            argv, where = translate(words, tiny_paper_model_dir), cwd
        return subprocess.run(argv, cwd=where, env=env, capture_output=True, text=True,
                              timeout=900)

    def run_chain(index: int) -> dict[str, subprocess.CompletedProcess | None]:
        return {line: run_one(line) for line in README_LINES if chain(line) == index}

    with ThreadPoolExecutor(max_workers=2) as pool:
        chains = list(pool.map(run_chain, (0, 1)))
    return {**chains[0], **chains[1]}


@pytest.mark.parametrize("line", README_LINES)
def test_readme_line_runs_as_written(readme_runs, line):
    words = shlex.split(line, comments=True)
    proc = readme_runs[line]
    if proc is None:
        check_train_line(words)
        pytest.skip("names a real Stable Diffusion folder: flags and config checked only")
    assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize(("config", "line"), CONFIG_LINES)
def test_config_docstring_commands_parse(config, line):
    check_train_line(shlex.split(line))


def test_readme_names_every_workflow():
    text = (ROOT / "README.md").read_text()
    for heading in ("Sample", "Decompose", "Edit", "Import", "Build a dataset", "Train",
                    "Resume", "Export"):
        assert re.search(rf"^## {heading}", text, re.M), heading
    for script in ("sample.py", "train.py", "init_model", "build_dataset", "import_layers"):
        assert any(script in line for line in README_LINES), script

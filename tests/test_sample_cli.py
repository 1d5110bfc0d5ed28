"""`sample.py` end to end on a tiny model folder, and its one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_sample(*args, cwd=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_sample_writes_the_layer_files(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_sample("--model", tiny_model_dir, "--prompt", "a red star in front of a blue wall",
                      "--background", "a blue wall", "--layer", "a red star@0.1,0.1,0.6,0.6",
                      "--steps", "2", "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} >= {"background.png", "layer_01.png",
                                               "composite.png", "layers.psd", "layers.ora",
                                               "preview.png", "scene.json"}
    assert str(out) in proc.stdout


@pytest.mark.parametrize("args", [
    ["--layer", "a red star@0.1,0.1,1.6,0.6"],
    ["--layer", "a red star@0.5,0.5,0.2,0.9"],
    ["--layer", "a red star@0.1,0.1,zero,0.6"],
    ["--steps", "many"],
    ["--steps", "0"],
    ["--guidance", "-2"],
])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tiny_model_dir, tmp_path, args):
    out = tmp_path / "out"
    proc = run_sample("--model", tiny_model_dir, "--prompt", "a red star", "--background",
                      "a blue wall", "--out", out, *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert not out.exists()

"""`sample.py` end to end on a tiny model folder, and its one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from child_env import one_device_env

ROOT = Path(__file__).resolve().parent.parent


def run_sample(*args, cwd=None):
    env = one_device_env()
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


@pytest.mark.parametrize("regenerate", [False, True])
def test_decompose_keeps_the_background_outside_the_boxes_unless_asked(tiny_model_dir,
                                                                       tmp_path, regenerate):
    import json

    import numpy as np
    from PIL import Image

    picture = np.zeros((8, 8, 3), np.uint8)
    picture[..., 2] = 200
    picture[1:3, 1:3] = (230, 20, 20)
    Image.fromarray(picture).save(tmp_path / "in.png")
    out = tmp_path / "out"
    proc = run_sample("decompose", tmp_path / "in.png", "--background", "a blue wall",
                      "--layer", "a red star@0,0,0.5,0.5", "--model", tiny_model_dir,
                      "--steps", "2", "--out", out, "--no-progress",
                      *(["--regenerate-background", "--no-matte"] if regenerate else []))
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "scene.json").read_text())
    assert record["keep_background"] is not regenerate
    assert record["matte"] is not regenerate  # on by default, off with --no-matte
    background = np.asarray(Image.open(out / "background.png"))
    kept = np.array_equal(background[5:, :], picture[5:, :])  # below the dilated box
    assert kept is not regenerate


def test_help_lists_the_subcommands_and_every_default():
    proc = run_sample("--help")
    assert proc.returncode == 0, proc.stderr
    assert "decompose IMAGE" in proc.stdout and "edit DIR" in proc.stdout
    assert "(default: 30)" in proc.stdout and "--irh-restart" in proc.stdout
    edit_help = run_sample("edit", "--help").stdout
    assert "numbered from 1" in edit_help and "snapped" in edit_help


def test_edit_uses_the_recorded_model_and_updates_the_global_prompt(tiny_model_dir, tmp_path):
    import json

    model = os.path.relpath(tiny_model_dir, tmp_path)  # recorded as given, plus absolute
    proc = run_sample("--model", model, "--background", "a blue wall", "--layer",
                      "a red star@0.1,0.1,0.55,0.6", "--layer", "a green cat@0.4,0.4,0.9,0.9",
                      "--steps", "2", "--out", "a", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 foreground layers" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "'cat'" in warnings[0], proc.stderr
    saved = json.loads((tmp_path / "a" / "scene.json").read_text())
    assert saved["model"] == model and saved["model_path"] == str(Path(tiny_model_dir))
    assert saved["prompt"] == "a red star and a green cat in front of a blue wall"
    # no --model: the recorded one (the built-in model would not fit these latents)
    proc = run_sample("edit", "a", "--delete", "2", "--move", "1:+0.125,0", "--steps", "2",
                      "--out", "b", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 foreground layer;" in proc.stdout
    edited = json.loads((tmp_path / "b" / "scene.json").read_text())
    assert edited["prompt"] == "a red star in front of a blue wall"
    assert edited["model"] == model and edited["edited_from"] == "a"
    assert edited["layers"][0]["box"] == [round(v, 6) for v in edited["layers"][0]["box"]]


def test_builtin_model_is_recorded_by_name(tmp_path):
    from dreamlayer_jax.pipeline.builtin import builtin_model_path
    from dreamlayer_jax.pipeline.result import model_record

    assert model_record(str(builtin_model_path())) == {"model": "builtin"}
    assert model_record("builtin") == {"model": "builtin"}
    assert model_record("org/some-hub-model") == {"model": "org/some-hub-model"}
    assert model_record(str(tmp_path)) == {"model": str(tmp_path), "model_path": str(tmp_path)}


def test_builtin_names_pick_a_variant_and_an_unknown_one_names_the_choices(tmp_path):
    from dreamlayer_jax.errors import InputError
    from dreamlayer_jax.pipeline.builtin import (
        DEFAULT_VARIANT,
        builtin_model_path,
        builtin_name,
        builtin_variant,
    )
    from dreamlayer_jax.pipeline.result import model_record

    assert builtin_variant(None) == builtin_variant("builtin") == DEFAULT_VARIANT
    assert builtin_variant("builtin:paper") == "paper" and builtin_variant("runs/x") is None
    with pytest.raises(InputError, match="builtin:box, builtin:paper"):
        builtin_variant("builtin:boxes")
    assert builtin_name(builtin_model_path("paper").parent / "paper") in (None, "builtin:paper")
    assert model_record("builtin:paper") == {"model": "builtin:paper"}
    assert model_record(str(builtin_model_path())) == {"model": "builtin"}
    assert builtin_name(tmp_path) is None

"""Boxes optional: `Scene` / `Layer` without boxes or a global prompt, `sample.py` with a
tiny paper-variant model end to end, and its one-line refusals (nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from child_env import one_device_env

from dreamlayer_jax.errors import InputError
from dreamlayer_jax.pipeline.scene import FULL_BOX, Layer, Scene

ROOT = Path(__file__).resolve().parent.parent
# one CPU device; the matmul precision of tests/conftest.py (one compile cache)
ENV = one_device_env(PYTHONPATH=str(ROOT), JAX_DEFAULT_MATMUL_PRECISION="highest")
LONG = "a small red star with a large green ring on a blue wall"  # 13 tokens


def run_sample(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *map(str, args)],
                          capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)


# -- Scene and Layer -----------------------------------------------------------------
def test_layers_without_boxes_and_a_composed_global_prompt():
    scene = Scene(background="a blue wall", layers=[Layer("a red star"), Layer("a green ring")])
    assert scene.layers[0].box is None and scene.boxless == [1, 2]
    assert scene.prompt == "a red star and a green ring in front of a blue wall"
    assert Scene("", "a blue wall").prompt == "a blue wall"
    # positional use keeps working, a given prompt is kept, given boxes are still checked
    kept = Scene("my picture", "a blue wall", (Layer("a red star", [0.1, 0.2, 0.5, 0.6]),))
    assert kept.prompt == "my picture" and kept.layers[0].box == (0.1, 0.2, 0.5, 0.6)
    with pytest.raises(InputError, match="layer 1 box: box values must lie in"):
        Scene(background="a blue wall", layers=[Layer("a red star", (0.1, 0.1, 1.5, 0.5))])
    with pytest.raises(InputError, match="background must be a non-empty string"):
        Scene(layers=[Layer("a red star")])


def test_scene_json_without_boxes_or_prompt_round_trips():
    raw = {"background": {"prompt": "a blue wall"},
           "layers": [{"prompt": "a red star"}, {"prompt": "a green ring", "box": None},
                      {"prompt": "a pink cross", "box": [0.1, 0.1, 0.5, 0.5]}]}
    scene = Scene.from_dict(raw)
    assert [l.box for l in scene.layers] == [None, None, (0.1, 0.1, 0.5, 0.5)]
    record = scene.to_dict()
    assert [sorted(entry) for entry in record["layers"]] == [["prompt"], ["prompt"],
                                                             ["box", "prompt"]]
    assert Scene.from_dict(json.loads(json.dumps(record))) == scene
    with pytest.raises(InputError, match="layer 1 box: a box must be 4 numbers"):
        Scene.from_dict({"background": "a blue wall", "layers": [{"prompt": "x", "box": 5}]})
    with pytest.raises(InputError, match="missing field 'background'"):
        Scene.from_dict({"prompt": "a red star"})


def test_moving_or_scaling_a_boxless_layer_is_refused_in_one_line(tiny_pipe):
    from dreamlayer_jax.pipeline.edit import apply_ops
    from dreamlayer_jax.pipeline.edit_ops import Move, Reprompt, ScaleOp

    scene = Scene(background="a blue wall", layers=[Layer("a red star"),
                                                    Layer("a green ring", FULL_BOX)])
    latents = np.zeros((4, *tiny_pipe.latent_shape()), np.float32)
    for op in (Move(1, 0.1, 0.0), ScaleOp(1, 0.5)):
        with pytest.raises(InputError, match="layer 1 has no box"):
            apply_ops(tiny_pipe, scene, latents, [op])
    edited, _, regenerate = apply_ops(tiny_pipe, scene, latents,
                                      [Reprompt(1, "a pink cross"), ScaleOp(2, 0.5)])
    assert edited.layers[0] == Layer("a pink cross") and regenerate == [True, False]
    assert edited.layers[1].box == (0.25, 0.25, 0.75, 0.75)


# -- the command line ----------------------------------------------------------------
def test_cli_modules_import_no_cycle():
    code = ("import sys, dreamlayer_jax.cli.sample_edit; "
            "print('dreamlayer_jax.cli.sample' in sys.modules, 'jax' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert proc.stdout.split() == ["False", "False"], proc.stderr


def test_paper_model_samples_without_any_box(tiny_paper_model_dir, tmp_path):
    out = tmp_path / "out"
    proc = run_sample("--model", tiny_paper_model_dir, "--layer", "a red star", "--layer",
                      "a green ring", "--background", "a blue wall", "--steps", "2",
                      "--irh-restart", "700", "--irh-stop", "300", "--out", out,
                      "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(line.startswith(("error", "warning")) for line in proc.stderr.splitlines())
    assert {p.name for p in out.iterdir()} >= {
        "background.png", "layer_01.png", "layer_02.png", "composite.png", "layers.psd",
        "layers.ora", "preview.png", "scene.json", "latents.safetensors"}
    record = json.loads((out / "scene.json").read_text())
    assert record["prompt"] == "a red star and a green ring in front of a blue wall"
    assert record["layers"] == [{"prompt": "a red star", "file": "layer_01.png"},
                                {"prompt": "a green ring", "file": "layer_02.png"}]
    assert Scene.from_json(out / "scene.json").boxless == [1, 2]
    assert (record["variant"], record["irh_restart"], record["irh_stop"]) == ("paper", 700, 300)

    from PIL import Image
    from psd_tools import PSDImage

    assert [layer.name for layer in PSDImage.open(out / "layers.psd") if layer.visible] == [
        "a blue wall", "a red star", "a green ring"]
    assert Image.open(out / "layer_01.png").mode == "RGBA"


def _refused(main_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run `sample.py`'s main in-process: exit code 2, one stderr line, nothing written."""
    from dreamlayer_jax.cli.sample import main

    before = set(tmp_path.rglob("*"))
    code = main([*main_args, "--out", str(tmp_path / "out"), "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not (tmp_path / "out").exists() and set(tmp_path.rglob("*")) == before
    return lines[0]


@pytest.mark.parametrize("args, expect", [
    (["--layer", "a red star", "--layer", "a green ring", "--layer", "a blue square",
      "--layer", "a pink cross"],
     "the scene has 4 foreground layers but the model supports at most 3"),
    (["--layer", LONG, "--layer", LONG], "add up to 38 tokens with [SOS] and [EOS], but the "
                                         "global layer's concatenated prompt holds 32"),
    (["--layer", "a red star", "--irh-stop", "700"],
     "irh_stop (T_H' = 700) must not exceed irh_restart (T_H = 600)"),
    (["--layer", "a red star", "--irh-restart", "300", "--irh-stop", "500"],
     "--irh-stop 500 (T_H') must not exceed --irh-restart 300 (T_H)"),
    (["--layer", "a red star", "--irh-restart=-5"], "--irh-restart must be a timestep >= 0"),
], ids=["too-many-layers", "global-prompt-overflow", "irh-stop-above-model-restart",
        "irh-stop-above-restart", "irh-restart-negative"])
def test_paper_model_bad_input_is_one_line_and_writes_nothing(
        tiny_paper_model_dir, tmp_path, capsys, args, expect):
    line = _refused(["--model", str(tiny_paper_model_dir), "--background", "a striped blue "
                     "wall at sunset", *args], tmp_path, capsys)
    assert expect in line, line


def test_box_model_refuses_a_layer_without_a_box(tiny_model_dir, tmp_path, capsys):
    line = _refused(["--model", str(tiny_model_dir), "--background", "a blue wall",
                     "--layer", "a red star@0.1,0.1,0.5,0.5", "--layer", "a green ring"],
                    tmp_path, capsys)
    assert "foreground 2 ('a green ring') has no box" in line, line
    assert "box variant" in line, line


def test_a_prompt_given_to_a_paper_model_is_only_recorded_with_a_warning():
    from dreamlayer_jax.cli.sample import build_parser, warn_ignored_prompt
    from dreamlayer_jax.models.layer_unet import DreamLayerConfig

    pipe = SimpleNamespace(config=DreamLayerConfig(variant="paper"))
    args = build_parser().parse_args(["--prompt", "p", "--background", "b"])
    with pytest.warns(UserWarning, match="--prompt is only recorded"):
        warn_ignored_prompt(pipe, args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_ignored_prompt(SimpleNamespace(config=DreamLayerConfig()), args)

"""`LayeredResult.save`: the files, the PSD and ORA round trip, and atomic writing."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from dreamlayer_jax.errors import OutputError
from dreamlayer_jax.pipeline.scene import Layer, Scene

SCENE = Scene(prompt="a red star and a green ring in front of a blue wall",
              background="a blue wall",
              layers=[Layer("a red star", (0.0, 0.0, 0.75, 0.75)),
                      Layer("a green ring", (0.25, 0.25, 1.0, 1.0))])
FILES = {"background.png", "layer_01.png", "layer_02.png", "composite.png", "scene.json",
         "layers.psd", "layers.ora", "preview.png", "latents.safetensors"}


@pytest.fixture(scope="module")
def pasted(tiny_pipe):
    """A result whose global layer is the hard paste of its layers (IRH retain 1)."""
    return tiny_pipe(SCENE, num_inference_steps=3, seed=3, irh_start=0.7, irh_retain=1.0)


def test_save_writes_every_file_and_a_readable_scene_json(pasted, tmp_path):
    out = pasted.save(tmp_path / "run")
    assert {p.name for p in out.iterdir()} == FILES
    record = json.loads((out / "scene.json").read_text())
    assert record["layers"][1] == {"prompt": "a green ring", "box": [0.25, 0.25, 1.0, 1.0],
                                   "file": "layer_02.png"}
    assert record["seed"] == 3 and record["steps"] == 3
    assert Image.open(out / "layer_01.png").mode == "RGBA"
    from dreamlayer_jax.data.scene_folder import read_scene_folder

    scene = read_scene_folder(out)  # a saved result is also a training scene folder
    assert scene.layer_prompts == ["a red star", "a green ring"]


def test_psd_reopens_with_named_layers_in_order_and_matches_the_composite(pasted, tmp_path):
    from psd_tools import PSDImage

    out = pasted.save(tmp_path / "run")
    psd = PSDImage.open(out / "layers.psd")
    from dreamlayer_jax.io.layered_files import GLOBAL_LAYER_NAME

    names = [layer.name for layer in psd]
    # named by their prompts; the model's global layer travels along as a hidden top layer
    assert names == ["a blue wall", "a red star", "a green ring", GLOBAL_LAYER_NAME]
    assert [layer.visible for layer in psd] == [True, True, True, False]
    flat = np.asarray(psd.composite().convert("RGB"), np.int16)
    composite = np.asarray(Image.open(out / "composite.png"), np.int16)
    opaque = np.zeros(flat.shape[:2], bool)
    for layer in pasted.layers:
        opaque |= layer[..., 3] == 255
    if opaque.any():
        assert np.abs(flat[opaque] - composite[opaque]).max() <= 3


def test_ora_stack_lists_the_layers_top_first(pasted, tmp_path):
    out = pasted.save(tmp_path / "run")
    with zipfile.ZipFile(out / "layers.ora") as ora:
        assert ora.namelist()[0] == "mimetype"
        stack = ora.read("stack.xml").decode()
    names = ("a green ring", "a red star", "a blue wall")  # layers are named by their prompts
    order = [stack.index(f'name="{name}"') for name in names]
    assert order == sorted(order)


def test_save_refuses_a_non_empty_folder_or_a_file_and_writes_nothing(pasted, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        pasted.save(busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        pasted.save(a_file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "file"]


def test_an_interrupted_save_leaves_nothing_behind(pasted, tmp_path, monkeypatch):
    import dreamlayer_jax.pipeline.result as result_module

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(result_module, "write_ora", boom)
    with pytest.raises(OutputError, match="No space left"):
        pasted.save(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []

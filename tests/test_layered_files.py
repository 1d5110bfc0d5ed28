"""The PSD / ORA writers and every output of `LayeredResult.save`, read back: the
flattened picture is the stack's, the global layer a hidden layer of its own in both
formats, the two formats agree, and file modes follow the umask."""

import io
import json
import os
import stat
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
from PIL import Image
from psd_tools import PSDImage

from dreamlayer_jax.cli import import_layers
from dreamlayer_jax.data.compositing import alpha_composite
from dreamlayer_jax.data.importers import check_layered_file
from dreamlayer_jax.data.scene_folder import read_scene_folder
from dreamlayer_jax.io.layered_files import GLOBAL_LAYER_NAME, write_ora, write_psd


@pytest.fixture
def umask():
    """Set the umask for one test (and restore it)."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def stack():
    rng = np.random.default_rng(5)
    background = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    star = np.zeros((20, 24, 4), np.uint8)
    star[3:9, 4:12] = (250, 20, 20, 255)
    star[9, 4:12] = (250, 20, 20, 100)  # a soft edge
    ring = np.zeros((20, 24, 4), np.uint8)
    ring[6:16, 10:20] = (20, 220, 40, 200)
    empty = np.zeros((20, 24, 4), np.uint8)  # a layer the model left empty
    global_layer = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)  # != the flattened stack
    return background, [star, ring, empty], global_layer


def _ora_members(path):
    with zipfile.ZipFile(path) as archive:
        root = ET.fromstring(archive.read("stack.xml"))
        merged = np.asarray(Image.open(io.BytesIO(archive.read("mergedimage.png"))))
        layers = root.find("stack").findall("layer")
        pictures = {layer.get("src"): np.asarray(Image.open(io.BytesIO(archive.read(
            layer.get("src"))))) for layer in layers}
    return layers, merged, pictures


def test_the_global_layer_is_a_hidden_layer_and_the_flattened_picture_the_stack(
        tmp_path, stack):
    background, layers, global_layer = stack
    names = ["a wall", "a star", "a ring", "nothing"]
    flat = alpha_composite(background, layers)
    psd_path = write_psd(tmp_path / "s.psd", background, layers, names, global_layer)
    psd = PSDImage.open(psd_path)
    assert [layer.name for layer in psd] == names + [GLOBAL_LAYER_NAME]
    assert [layer.visible for layer in psd] == [True] * 4 + [False]
    assert np.array_equal(np.rint(psd[-1].numpy()[..., :3] * 255), global_layer)
    assert np.abs(np.rint(psd.numpy()[..., :3] * 255) - flat).max() <= 1

    ora_layers, merged, pictures = _ora_members(write_ora(
        tmp_path / "s.ora", background, layers, names, global_layer))
    top = ora_layers[0]
    assert (top.get("name"), top.get("visibility")) == (GLOBAL_LAYER_NAME, "hidden")
    assert np.array_equal(pictures[top.get("src")], global_layer)
    assert [layer.get("name") for layer in ora_layers[::-1]] == names + [GLOBAL_LAYER_NAME]
    assert np.array_equal(merged, flat)  # what OpenRaster readers take as the rendering


def test_psd_and_ora_of_one_stack_import_the_same(tmp_path, stack):
    background, layers, global_layer = stack
    names = ["a wall", "a star", "a ring", "nothing"]
    got = [check_layered_file(writer(tmp_path / f"s.{kind}", background, layers, names,
                                     global_layer))
           for kind, writer in (("psd", write_psd), ("ora", write_ora))]
    for check in got:
        assert check.scene.layer_prompts == ["a star", "a ring"]
        assert check.empty_layers == 1
        assert sorted(check.skipped) == ["empty layer 'nothing'",
                                         f"hidden layer '{GLOBAL_LAYER_NAME}'"]
        assert np.array_equal(check.scene.background, background)
    psd_scene, ora_scene = (check.scene for check in got)
    for a, b in zip(psd_scene.layers, ora_scene.layers):
        assert np.array_equal(a[..., 3], b[..., 3])
        assert np.abs(a.astype(int) - b).max() <= 1
    assert np.abs(psd_scene.composite.astype(int) - ora_scene.composite).max() <= 1


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_written_files_follow_the_umask(tmp_path, stack, umask, mask):
    background, layers, global_layer = stack
    umask(mask)
    for writer, name in ((write_psd, "s.psd"), (write_ora, "s.ora")):
        path = writer(tmp_path / name, background, layers, ["a", "b", "c"], global_layer)
        assert _mode(path) == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ora", "s.psd"]  # no temporaries


def test_every_output_of_a_saved_result_reads_back(tmp_path, stack, umask):
    from safetensors.numpy import load_file

    from dreamlayer_jax.pipeline.result import LayeredResult
    from dreamlayer_jax.pipeline.scene import Layer, Scene

    background, layers, global_layer = stack
    scene = Scene(prompt="a red star and a green ring in front of a wall", background="a wall",
                  layers=[Layer("a red star", (0.1, 0.1, 0.5, 0.5)),
                          Layer("a green ring", (0.4, 0.3, 0.85, 0.8)),
                          Layer("a lost thing", (0.0, 0.0, 0.2, 0.2))])
    latents = np.random.default_rng(0).normal(size=(5, 3, 3, 4)).astype(np.float32)
    result = LayeredResult(scene, background, layers, global_layer, {"seed": 1}, latents)
    umask(0o027)
    out = result.save(tmp_path / "run")

    assert _mode(out) == 0o750
    for path in out.iterdir():
        assert _mode(path) == 0o640, path.name
    # PNGs and scene.json: a scene folder (the global layer is its composite)
    folder = read_scene_folder(out)
    assert np.array_equal(folder.background, background)
    assert all(np.array_equal(a, b) for a, b in zip(folder.layers, layers))
    assert np.array_equal(folder.composite, global_layer)
    assert json.loads((out / "scene.json").read_text())["seed"] == 1
    assert np.array_equal(load_file(str(out / "latents.safetensors"))["latents"], latents)
    preview = np.asarray(Image.open(out / "preview.png"))
    assert preview.shape[0] == 20 and np.array_equal(preview[:, :24], background)
    # layers.psd and layers.ora: the same layers, the empty one skipped, the stack's
    # flattened picture, the global layer hidden on top.
    for name in ("layers.psd", "layers.ora"):
        check = check_layered_file(out / name)
        assert check.scene is not None, check.reason
        assert check.scene.layer_prompts == ["a red star", "a green ring"]
        assert check.empty_layers == 1
        assert np.array_equal(check.scene.background, background)
        for got, want in zip(check.scene.layers, layers[:2]):
            assert np.array_equal(got[..., 3], want[..., 3])
            assert np.abs(got.astype(int) - want).max() <= 1
        assert np.abs(check.scene.composite.astype(int)
                      - alpha_composite(background, layers)).max() <= 1
    psd = PSDImage.open(out / "layers.psd")
    assert psd[-1].name == GLOBAL_LAYER_NAME and not psd[-1].visible
    assert np.array_equal(np.rint(psd[-1].numpy()[..., :3] * 255), global_layer)
    ora_layers, _, pictures = _ora_members(out / "layers.ora")
    assert np.array_equal(pictures[ora_layers[0].get("src")], global_layer)


def test_imported_scene_folders_follow_the_umask(tmp_path, stack, umask, capsys):
    background, layers, global_layer = stack
    source = write_ora(tmp_path / "in.ora", background, layers[:2], ["a wall", "a star", "a ring"])
    umask(0o022)
    assert import_layers.main([str(source), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert _mode(out) == 0o755 and _mode(out / "in") == 0o755
    assert {_mode(p) for p in (out / "in").iterdir()} == {0o644}
    assert read_scene_folder(out / "in").layer_prompts == ["a star", "a ring"]
    assert "imported 1 scenes" in capsys.readouterr().out

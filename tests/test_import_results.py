"""Results imported back: the PSD and the ORA a result holds restore its exact scene
(prompts, boxes, global prompt, paint order) through the scene they carry, a result
folder is one scene, folders are searched recursively, an import that finds nothing
says why, and the source is recorded as given. Result folders are written with
`LayeredResult.save` directly: no model, no sampling."""

import json
import os
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
from psd_tools import PSDImage

from dreamlayer_jax.cli import import_layers
from dreamlayer_jax.data.import_sources import find_sources
from dreamlayer_jax.data.importers import check_layered_file, import_layered_files
from dreamlayer_jax.data.scene_folder import read_scene_folder, write_scene_folder
from dreamlayer_jax.io.layered_files import write_ora
from dreamlayer_jax.io.scene_record import XMP_NAMESPACE, read_record
from dreamlayer_jax.pipeline.result import LayeredResult
from dreamlayer_jax.pipeline.scene import Layer, Scene

LONG = "a very long prompt " * 20  # 380 characters: more than a PSD layer name holds
SCENE = Scene(prompt="a hand-written global prompt", background="a striped wall ★",
              layers=[Layer("a red star", (0.125, 0.1, 0.5, 0.5)),
                      Layer(LONG.strip()),  # no box: its box is its pixels' bounds
                      Layer("a green ring", (0.375, 0.25, 0.875, 0.8))])


def _pictures():
    rng = np.random.default_rng(7)
    background = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    layers = []
    for (x0, y0, x1, y1), colour in (((3, 2, 12, 10), (250, 20, 20)),
                                     ((8, 12, 20, 18), (20, 20, 250)),
                                     ((9, 5, 21, 16), (20, 220, 40))):
        layer = np.zeros((20, 24, 4), np.uint8)
        layer[y0:y1, x0:x1] = (*colour, 255)
        layer[y1 - 1, x0:x1, 3] = 90  # a soft edge
        layers.append(layer)
    global_layer = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    return background, layers, global_layer


def _save(folder, empty_last=False):
    background, layers, global_layer = _pictures()
    if empty_last:
        layers[-1] = np.zeros_like(layers[-1])
    return LayeredResult(SCENE, background, layers, global_layer, {"seed": 1}).save(folder)


def _assert_same_scene(back, scene=SCENE):
    background, layers, _ = _pictures()
    assert back.prompt == scene.prompt and back.background_prompt == scene.background
    assert back.layer_prompts == [layer.prompt for layer in scene.layers]
    assert back.boxes[0] == scene.layers[0].box and back.boxes[2] == scene.layers[2].box
    assert back.boxes[1] == (8 / 24, 12 / 20, 20 / 24, 18 / 20)  # the boxless layer's pixels
    assert np.array_equal(back.background, background)
    for got, want in zip(back.layers, layers, strict=True):
        assert np.array_equal(got[..., 3], want[..., 3])
        assert np.abs(got.astype(int) - want).max() <= 1


@pytest.mark.parametrize("name", ["layers.psd", "layers.ora"])
def test_a_saved_result_file_imports_as_the_exact_scene(tmp_path, name):
    out = _save(tmp_path / "a")
    check = check_layered_file(out / name)
    assert check.scene is not None, check.reason
    _assert_same_scene(check.scene)
    assert check.scene.meta["import"]["prompts"] == ["layer names", "embedded scene"]
    assert check.warnings == []


def test_layers_are_named_by_their_prompts_so_files_that_lose_the_scene_keep_them(tmp_path):
    out = _save(tmp_path / "a")
    psd = PSDImage.open(out / "layers.psd")
    assert [layer.name for layer in psd][:4] == ["a striped wall ★", "a red star", LONG[:255],
                                                 "a green ring"]
    # an ORA re-saved by a program that drops dreamlayer/scene.json (and scene.json gone)
    (out / "scene.json").unlink()
    stripped = tmp_path / "plain.ora"
    with zipfile.ZipFile(out / "layers.ora") as zin, zipfile.ZipFile(stripped, "w") as zout:
        for item in zin.namelist():
            if not item.startswith("dreamlayer/"):
                zout.writestr(item, zin.read(item))
    back = check_layered_file(stripped).scene
    assert back.layer_prompts == [layer.prompt for layer in SCENE.layers]
    assert back.background_prompt == SCENE.background
    assert back.prompt == f"a red star and {LONG.strip()} and a green ring in front of " \
                          "a striped wall ★"  # composed: the global prompt was in the record


def test_an_empty_layer_is_skipped_and_the_others_keep_their_record(tmp_path):
    out = _save(tmp_path / "a", empty_last=True)
    for name in ("layers.psd", "layers.ora"):
        check = check_layered_file(out / name)
        assert check.empty_layers == 1 and check.warnings == []
        assert check.scene.layer_prompts == ["a red star", LONG.strip()]
        assert check.scene.prompt == SCENE.prompt and check.scene.boxes[0] == (0.125, 0.1, 0.5,
                                                                               0.5)


def test_a_renamed_layer_wins_over_the_record_and_says_so(tmp_path):
    out = _save(tmp_path / "a")
    psd = PSDImage.open(out / "layers.psd")
    psd[1].name = "a yellow star"
    psd.save(tmp_path / "edited.psd")
    check = check_layered_file(tmp_path / "edited.psd")
    assert check.scene.layer_prompts == ["a yellow star", LONG[:255].strip(), "a green ring"]
    assert check.scene.prompt.startswith("a yellow star and ")
    assert any("embedded scene not used" in w for w in check.warnings)


def test_a_moved_layer_gets_the_box_of_its_pixels(tmp_path):
    out = _save(tmp_path / "a")
    moved = tmp_path / "moved.ora"
    with zipfile.ZipFile(out / "layers.ora") as zin, zipfile.ZipFile(moved, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "stack.xml":
                root = ET.fromstring(data)
                star = [e for e in root.iter("layer") if e.get("name") == "a red star"][0]
                star.set("x", str(int(star.get("x")) + 2))
                data = ET.tostring(root)
            if item != "mergedimage.png":  # the layers' own composite is the reference
                zout.writestr(item, data)
    check = check_layered_file(moved)
    assert check.scene.layer_prompts == [layer.prompt for layer in SCENE.layers]
    assert check.scene.boxes[0] == (5 / 24, 2 / 20, 14 / 24, 10 / 20)
    assert check.scene.boxes[2] == SCENE.layers[2].box
    assert any("'a red star' moved or repainted" in w for w in check.warnings)


def test_a_result_folder_imports_as_one_scene_and_folders_are_searched_recursively(tmp_path):
    root = tmp_path / "work"
    _save(root / "runs" / "deep" / "a")
    background, layers, _ = _pictures()
    write_ora(root / "art" / "cat.ora", background, layers[:1], ["a sofa", "a cat"])
    write_ora(root / ".trash" / "old.ora", background, layers[:1], ["a sofa", "a cat"])
    write_scene_folder(check_layered_file(root / "art" / "cat.ora").scene, root / "scenes" / "s1")
    sources, empty = find_sources([root])
    assert empty == []
    assert [(str(s.path.relative_to(root)), s.file and s.file.name) for s in sources] == [
        ("art/cat.ora", "cat.ora"), ("runs/deep/a", "layers.ora"), ("scenes/s1", None)]
    scenes, report = import_layered_files([root])
    assert report.loaded == 3 and report.num_skipped == 0
    _assert_same_scene(scenes[1])
    assert scenes[2].layer_prompts == ["a cat"] and scenes[2].meta["format"] == "scene folder"

    out = tmp_path / "scenes"
    assert import_layers.main([str(root), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a", "cat", "s1"]
    _assert_same_scene(read_scene_folder(out / "a"))


def test_an_old_result_without_a_record_takes_its_prompts_from_scene_json(tmp_path):
    folder = tmp_path / "old"
    background, layers, _ = _pictures()
    write_ora(folder / "layers.ora", background, layers, ["background", "01 a red star",
                                                          "02 long", "03 a green ring"])
    (folder / "scene.json").write_text(json.dumps(SCENE.to_dict()))
    (back,), _ = import_layered_files([folder])
    _assert_same_scene(back)
    assert back.meta["import"]["prompts"] == ["layer names", str(folder / "scene.json")]


def test_the_source_is_recorded_as_given_and_absolute(tmp_path, monkeypatch):
    _save(tmp_path / "results" / "a")
    monkeypatch.chdir(tmp_path)
    (back,), _ = import_layered_files(["results"])
    assert back.meta["source"] == os.path.join("results", "a", "layers.ora")
    assert back.meta["source_path"] == str((tmp_path / "results" / "a" / "layers.ora").resolve())
    assert import_layers.main(["results/a", "--out", "scenes"]) == 0
    saved = json.loads((tmp_path / "scenes" / "a" / "scene.json").read_text())
    assert saved["source"] == "results/a/layers.ora"


def test_an_import_that_finds_nothing_fails_saying_why(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("hi")
    assert import_layers.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: no layered file could be imported: {tmp_path / 'empty'}: no "
                   ".psd/.psb/.ora files or scene folders found (searched recursively)"]
    (tmp_path / "bad.ora").write_bytes(b"PK\x03\x04 not a zip")
    code = import_layers.main([str(tmp_path / "bad.ora"), str(tmp_path / "gone.psd"),
                               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "bad.ora: cannot read OpenRaster file" in err[0]
    assert "gone.psd: no such file or folder" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_record_rewritten_as_an_xmp_attribute_or_damaged_is_read_or_left_out():
    record = {"dreamlayer_scene": 1, "prompt": "p", "background": {"prompt": "b", "name": "b"},
              "layers": [{"prompt": "x", "name": "x", "area": [0, 0, 2, 2], "box": [0, 0, 1, 1]}]}
    text = json.dumps(record).replace('"', "&quot;")
    xmp = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
           f'02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:dreamlayer='
           f'"{XMP_NAMESPACE}" dreamlayer:scene="{text}"/></rdf:RDF></x:xmpmeta>').encode()
    notes = []
    assert read_record(xmp, True, notes)["layers"][0]["box"] == (0.0, 0.0, 1.0, 1.0)
    assert read_record(b"<x>no record</x>", True, notes) is None and notes == []
    assert read_record(b'{"dreamlayer_scene": 1, "layers": 3}', False, notes) is None
    assert notes and notes[0].startswith("embedded scene ignored")


def test_build_dataset_stages_nested_result_folders_as_one_scene_each(tmp_path):
    from types import SimpleNamespace

    from dreamlayer_jax.cli.build_dataset import stage_sources
    from dreamlayer_jax.errors import InputError

    _save(tmp_path / "results" / "day1" / "a")
    _save(tmp_path / "results" / "day2" / "deeper" / "b")
    args = SimpleNamespace(resolution=None, max_foregrounds=3, seed=0)
    warnings = stage_sources([tmp_path / "results"], 0, tmp_path / "staged", args, 0)
    staged = sorted(p.name for p in (tmp_path / "staged").iterdir())
    assert warnings == [] and staged == ["000001-a", "000002-b"]
    _assert_same_scene(read_scene_folder(tmp_path / "staged" / "000002-b"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="searched recursively"):
        stage_sources([tmp_path / "empty"], 0, tmp_path / "staged2", args, 0)

"""PSD / ORA writers and importers: round trips, sidecar prompts, damaged files."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image
from psd_tools import PSDImage
from psd_tools.api.layers import PixelLayer

from dreamlayer_jax.data.importers import (
    import_layered_file,
    import_layered_files,
    import_ora,
    import_psd,
)
from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator
from dreamlayer_jax.errors import DataError, InputError
from dreamlayer_jax.io.layered_files import write_ora, write_psd


@pytest.fixture(scope="module")
def scene():
    generator = SyntheticSceneGenerator(resolution=48, min_foregrounds=3, max_foregrounds=3)
    return generator.sample(11)


@pytest.fixture(scope="module")
def names(scene):
    return [scene.background_prompt] + scene.layer_prompts


def _write(kind, path, scene, names):
    if kind == "psd":
        return write_psd(path, scene.background, scene.layers, names)
    return write_ora(path, scene.background, scene.layers, names, scene.composite)


@pytest.mark.parametrize("kind", ["psd", "ora"])
def test_written_file_imports_back_as_the_same_layers(tmp_path, scene, names, kind):
    path = _write(kind, tmp_path / f"scene.{kind}", scene, names)
    back = import_layered_file(path)
    assert back.meta["layer_names"] == names and back.meta["format"] == kind
    assert back.background_prompt == scene.background_prompt
    assert back.layer_prompts == scene.layer_prompts  # names and paint order
    assert (
        back.prompt == " and ".join(scene.layer_prompts) + " in front of " + scene.background_prompt
    )
    assert back.boxes == scene.boxes
    assert np.array_equal(back.background, scene.background)
    for got, want in zip(back.layers, scene.layers):
        assert np.array_equal(got[..., 3], want[..., 3])
        opaque = want[..., 3] == 255
        assert np.array_equal(got[opaque], want[opaque])
        visible = want[..., 3] > 0
        assert np.abs(got[visible].astype(int) - want[visible]).max() <= 1
    # PSD: the flattened picture of the layers; ORA: the composite given to the writer.
    expected = scene.flatten() if kind == "psd" else scene.composite
    assert np.abs(back.composite.astype(int) - expected).max() <= 1


def test_ora_is_a_valid_openraster_zip(tmp_path, scene, names):
    path = write_ora(tmp_path / "s.ora", scene.background, scene.layers, names)
    with zipfile.ZipFile(path) as archive:
        first = archive.infolist()[0]
        assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
        assert archive.read("mimetype") == b"image/openraster"
        stack = archive.read("stack.xml").decode()
        assert stack.index(names[-1]) < stack.index(names[1]) < stack.index(names[0])  # top first
        for member in ("mergedimage.png", "Thumbnails/thumbnail.png"):
            assert member in archive.namelist()
        merged = np.asarray(Image.open(archive.open("mergedimage.png")))
        assert np.array_equal(merged, scene.flatten())  # no composite given: the flattened one


def test_foreground_names_alone_name_the_background_background(tmp_path, scene):
    path = write_psd(tmp_path / "s.psd", scene.background, scene.layers, ["x", "y", "z"])
    assert import_psd(path).background_prompt == "background"
    with pytest.raises(InputError, match="names"):
        write_psd(tmp_path / "t.psd", scene.background, scene.layers, ["x"])


def test_sidecar_json_gives_the_prompts(tmp_path, scene):
    path = write_ora(tmp_path / "s.ora", scene.background, scene.layers, ["a", "b", "c", "d"])
    (tmp_path / "s.json").write_text(
        json.dumps({"prompt": "all", "background": "bg", "layers": ["one", {"prompt": "two"}, "3"]})
    )
    back = import_ora(path)
    assert (back.prompt, back.background_prompt) == ("all", "bg")
    assert back.layer_prompts == ["one", "two", "3"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"layers": ["only two", "prompts"]}))
    with pytest.raises(DataError, match="other.json.*3 prompts"):
        import_ora(path, prompts_json=other)
    other.write_text("[1, 2")
    with pytest.raises(DataError, match="other.json"):
        import_ora(path, prompts_json=other)


def test_psd_layer_opacity_masks_and_hidden_layers_are_honoured(tmp_path):
    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    patch = np.zeros((6, 8, 4), np.uint8)
    patch[..., :3], patch[..., 3] = (10, 200, 30), 255
    psd = PSDImage.new("RGB", (24, 20))
    psd.append(PixelLayer.fromarray(background, psd, name="ground"))
    faded = PixelLayer.fromarray(patch, psd, name="faded", top=2, left=3)
    faded.opacity = 128
    psd.append(faded)
    hidden = PixelLayer.fromarray(patch, psd, name="hidden", top=10, left=10)
    hidden.visible = False
    psd.append(hidden)
    masked = patch.copy()
    masked[:, :4, 3] = 0  # left half transparent, stored as a pixel mask by frompil
    psd.append(PixelLayer.frompil(Image.fromarray(masked), psd, name="masked", top=12, left=14))
    path = tmp_path / "made.psd"
    psd.save(path)

    back = import_psd(path)
    assert back.meta["layer_names"] == ["ground", "faded", "masked"]
    assert set(np.unique(back.layers[0][..., 3])) == {0, 128}
    assert back.boxes[0] == (3 / 24, 2 / 20, 11 / 24, 8 / 20)
    assert back.boxes[1] == (18 / 24, 12 / 20, 22 / 24, 18 / 20)
    assert np.array_equal(back.layers[1][12:18, 18:22], np.broadcast_to(patch[0, 0], (6, 4, 4)))


def test_ora_without_merged_image_is_composited_and_honours_opacity(tmp_path, scene, names):
    path = write_ora(tmp_path / "s.ora", scene.background, scene.layers, names)
    edited = tmp_path / "edited.ora"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(edited, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "mergedimage.png":
                continue
            if info.filename == "stack.xml":
                text = data.decode()
                text = text.replace('opacity="1.000"', 'opacity="0.5"', 1)  # top layer
                text = text.replace('visibility="visible"', 'visibility="hidden"', 2)
                text = text.replace('visibility="hidden"', 'visibility="visible"', 1)
                data = text.encode()  # top layer half opaque, second layer hidden
            dst.writestr(info, data)
    back = import_ora(edited)
    assert back.layer_prompts == [scene.layer_prompts[0], scene.layer_prompts[2]]
    top = scene.layers[2][..., 3].astype(np.float32)
    assert np.abs(back.layers[1][..., 3] - np.rint(top * 0.5)).max() <= 0
    assert np.array_equal(back.composite, back.flatten())


def test_fully_transparent_layer_is_a_data_error(tmp_path, scene):
    empty = np.zeros_like(scene.layers[0])
    path = write_psd(tmp_path / "e.psd", scene.background, [empty], ["bg", "nothing"])
    with pytest.raises(DataError, match="'nothing' is fully transparent"):
        import_psd(path)


def test_damaged_files_are_skipped_and_counted(tmp_path, scene, names):
    good_psd = _write("psd", tmp_path / "good.psd", scene, names)
    good_ora = _write("ora", tmp_path / "good.ora", scene, names)
    truncated = tmp_path / "truncated.psd"
    truncated.write_bytes(good_psd.read_bytes()[:1500])
    not_zip = tmp_path / "broken.ora"
    not_zip.write_bytes(b"PK\x03\x04 but not really")
    with pytest.raises(DataError, match="truncated.psd"):
        import_psd(truncated)
    notes = tmp_path / "notes.txt"
    notes.write_text("hi")
    scenes, report = import_layered_files([tmp_path, notes])
    assert len(scenes) == 2 and report.loaded == 2
    assert sorted(item.path for item in report.skipped) == sorted(
        [str(truncated), str(not_zip), str(notes)]
    )
    assert {s.meta["format"] for s in scenes} == {"psd", "ora"}
    assert good_ora.exists()

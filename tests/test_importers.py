"""PSD / PSB / ORA import: what is imported, baked, skipped or refused (one line naming the
layer and the feature), the check against the file's flattened picture,
sidecar prompts, damaged files and `import_layers --check` (colour modes:
test_psd_colour_modes.py). Every file is built here,
with psd-tools, the project's ORA writer or raw bytes: no binary fixtures."""

import io
import json
import logging
import zipfile

import numpy as np
import pytest
from PIL import Image
from psd_tools import PSDImage
from psd_tools.api.layers import PixelLayer
from psd_tools.constants import BlendMode

from dreamlayer_jax.cli import import_layers
from dreamlayer_jax.data.compositing import alpha_composite
from dreamlayer_jax.data.importers import (
    TOLERANCE,
    check_layered_file,
    import_layered_file,
    import_layered_files,
    import_ora,
    import_psd,
)
from dreamlayer_jax.data.layer_stack import RefusedError, clean_name
from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator
from dreamlayer_jax.errors import DataError
from dreamlayer_jax.io.layered_files import GLOBAL_LAYER_NAME, write_ora, write_psd


@pytest.fixture(scope="module")
def scene():
    generator = SyntheticSceneGenerator(resolution=48, min_foregrounds=3, max_foregrounds=3)
    return generator.sample(11)


@pytest.fixture(scope="module")
def names(scene):
    return [scene.background_prompt] + scene.layer_prompts


def _write(kind, path, scene, names, global_layer=None):
    writer = write_psd if kind == "psd" else write_ora
    return writer(path, scene.background, scene.layers, names, global_layer)


def _rgba(h, w, color, alpha=255):
    patch = np.zeros((h, w, 4), np.uint8)
    patch[..., :3], patch[..., 3] = color, alpha
    return patch


def _psd(path, layers, size=(24, 20), mode="RGB", transparent=False):
    """A PSD from `(name, pixels, left, top, settings)` bottom first; `settings` are
    attributes set on the layer (opacity, blend_mode, visible, clipping...). psd-tools
    flattens over an opaque black backdrop unless `transparent`."""
    psd = PSDImage.new(mode, size)
    if transparent:
        psd._background_color = None
    for name, pixels, left, top, settings in layers:
        layer = PixelLayer.fromarray(pixels, psd, name=name, top=top, left=left)
        for key, value in settings.items():
            setattr(layer, key, value)
        psd.append(layer)
    psd.save(path)
    return path


def _ground(w=24, h=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- round trips through the project's own writers ---------------------------------------
@pytest.mark.parametrize("kind", ["psd", "ora"])
def test_written_file_imports_back_as_the_same_layers(tmp_path, scene, names, kind):
    global_layer = np.full_like(scene.composite, 40)  # the model's own picture: hidden
    path = _write(kind, tmp_path / f"scene.{kind}", scene, names, global_layer)
    check = check_layered_file(path)
    back = check.scene
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
    # Both formats: the flattened picture is the stack's; the global layer is skipped.
    assert np.abs(back.composite.astype(int) - scene.flatten()).max() <= 1
    assert check.skipped == [f"hidden layer '{GLOBAL_LAYER_NAME}'"]
    assert back.meta["import"]["max_difference"] <= 1


def test_psb_is_read(tmp_path):
    psd = PSDImage.new("RGB", (24, 20))
    psd._record.header.version = 2  # large-document format, before any layer is encoded
    psd.append(PixelLayer.fromarray(_ground(), psd, name="ground"))
    psd.append(PixelLayer.fromarray(_rgba(4, 5, (255, 0, 0)), psd, name="red", top=2, left=3))
    path = tmp_path / "big.psb"
    psd.save(path)
    back = import_layered_file(path)
    assert back.layer_prompts == ["red"] and back.boxes == [(3 / 24, 2 / 20, 8 / 24, 6 / 20)]
    assert np.array_equal(back.background, _ground())


# -- names and prompts -------------------------------------------------------------------
def test_control_characters_are_stripped_from_names(tmp_path):
    assert clean_name("background\x00") == "background"
    assert clean_name(" a\tred\nstar\x07 ") == "a red star"
    assert clean_name("🐱\u200d👤 cat") == "🐱\u200d👤 cat"  # format characters kept
    path = _psd(tmp_path / "krita.psd", [("background\x00", _ground(), 0, 0, {}),
                                         ("a cat\x00", _rgba(4, 4, (9, 9, 9)), 2, 2, {})])
    back = import_psd(path)
    assert (back.background_prompt, back.layer_prompts) == ("background", ["a cat"])
    assert back.prompt == "a cat in front of background"


def test_unnamed_layer_is_refused_unless_the_sidecar_names_it(tmp_path):
    path = _psd(tmp_path / "u.psd", [("ground", _ground(), 0, 0, {}),
                                     ("", _rgba(4, 4, (9, 9, 9)), 2, 2, {})])
    with pytest.raises(RefusedError, match=r"u\.psd: layer 2 \(unnamed\) has no name .*u\.json"):
        import_psd(path)
    (tmp_path / "u.json").write_text(json.dumps({"layers": ["a grey square"]}))
    assert import_psd(path).prompt == "a grey square in front of ground"


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


# -- what is baked ------------------------------------------------------------------------
def test_psd_layer_opacity_masks_and_hidden_layers_are_honoured(tmp_path):
    patch = _rgba(6, 8, (10, 200, 30))
    psd = PSDImage.new("RGB", (24, 20))
    psd.append(PixelLayer.fromarray(_ground(), psd, name="ground"))
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

    check = check_layered_file(path)
    back = check.scene
    assert back.meta["layer_names"] == ["ground", "faded", "masked"]
    assert set(np.unique(back.layers[0][..., 3])) == {0, 128}
    assert back.boxes[0] == (3 / 24, 2 / 20, 11 / 24, 8 / 20)
    assert back.boxes[1] == (18 / 24, 12 / 20, 22 / 24, 18 / 20)
    assert np.array_equal(back.layers[1][12:18, 18:22], np.broadcast_to(patch[0, 0], (6, 4, 4)))
    assert check.skipped == ["hidden layer 'hidden'"]


def test_group_opacity_is_folded_in_or_the_group_merged(tmp_path):
    def build(path, second_left):
        psd = PSDImage.new("RGB", (24, 20))
        psd.append(PixelLayer.fromarray(_ground(), psd, name="ground"))
        group = psd.create_group(name="pair", opacity=128)
        group.append(PixelLayer.fromarray(_rgba(6, 6, (255, 0, 0)), psd, name="red", top=2,
                                          left=2))
        group.append(PixelLayer.fromarray(_rgba(6, 6, (0, 0, 255)), psd, name="blue", top=4,
                                          left=second_left))
        psd.save(path)
        return check_layered_file(path)

    apart = build(tmp_path / "apart.psd", 12)  # no overlap: folding is exact
    assert apart.scene.layer_prompts == ["red", "blue"]
    assert {int(a) for a in np.unique(apart.scene.layers[0][..., 3])} == {0, 128}
    assert "group 'pair': group opacity 50% folded into its layers" in apart.baked
    overlap = build(tmp_path / "overlap.psd", 5)  # overlapping: one layer named after it
    assert overlap.scene.layer_prompts == ["pair"]
    assert any("merged into one layer (group opacity 50% over overlapping" in note
               for note in overlap.baked)
    for check in (apart, overlap):  # the check against the flattened picture passed
        assert check.scene.meta["import"]["max_difference"] <= 2


def test_clipped_layer_is_merged_into_its_base(tmp_path):
    base = _rgba(8, 8, (0, 200, 0))
    base[:, :, 3] = np.linspace(60, 255, 8, dtype=np.uint8)  # soft: folding would not be exact
    path = _psd(tmp_path / "clip.psd", [("ground", _ground(), 0, 0, {}),
                                        ("body", base, 4, 4, {}),
                                        ("shade", _rgba(20, 6, (0, 0, 0), 128), 0, 6,
                                         {"clipping": True})])
    check = check_layered_file(path)
    assert check.scene.layer_prompts == ["body"]
    assert "layer 'body': clipped layers 'shade' merged into it" in check.baked
    assert check.scene.boxes == [(4 / 24, 4 / 20, 12 / 24, 12 / 20)]  # clipped to the base
    assert check.scene.meta["import"]["max_difference"] <= 2


def test_blend_mode_over_nothing_is_normal(tmp_path):
    path = _psd(tmp_path / "bottom.psd", [("ground", _ground(), 0, 0,
                                           {"blend_mode": BlendMode.MULTIPLY})],
                transparent=True)
    check = check_layered_file(path)
    assert check.scene is not None
    assert check.baked == ["layer 'ground': blend mode multiply over nothing is normal"]


# -- what is refused ----------------------------------------------------------------------
@pytest.mark.parametrize("mode, words", [(BlendMode.MULTIPLY, "blend mode multiply depends on"),
                                         (BlendMode.DISSOLVE, "blend mode dissolve cannot")])
def test_blend_modes_over_other_layers_are_refused_naming_the_layer(tmp_path, mode, words):
    path = _psd(tmp_path / "blend.psd", [("ground", _ground(), 0, 0, {}),
                                         ("shadow", _rgba(5, 5, (90, 90, 90)), 3, 3,
                                          {"blend_mode": mode})])
    with pytest.raises(RefusedError, match=rf"blend\.psd: layer 'shadow': {words}"):
        import_psd(path)
    check = check_layered_file(path)
    assert check.status == "refuse" and "layer 'shadow'" in check.line()


def test_layers_that_do_not_reproduce_the_flattened_picture_are_refused(tmp_path, scene, names):
    path = write_ora(tmp_path / "s.ora", scene.background, scene.layers, names)
    edited = tmp_path / "edited.ora"
    wrong = scene.flatten().copy()
    wrong[10:30, 10:30] = 255 - wrong[10:30, 10:30]  # e.g. an effect the layers lack
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(edited, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "mergedimage.png":
                buffer = io.BytesIO()
                Image.fromarray(wrong).save(buffer, format="PNG")
                data = buffer.getvalue()
            dst.writestr(info, data)
    with pytest.raises(RefusedError, match=r"do not reproduce the file's flattened picture "
                                           r"\(mergedimage\.png\): \d+ pixels differ by more "
                                           rf"than {TOLERANCE} levels \(largest \d+ at x=\d+, "
                                           r"y=\d+, (under|outside)"):
        import_ora(edited)
    # a looser tolerance lets it through
    assert import_ora(edited, tolerance=255).composite[15, 15].tolist() == wrong[15, 15].tolist()


# -- empty layers, ORA specifics ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["psd", "ora"])
def test_empty_layers_are_skipped_and_counted(tmp_path, scene, kind):
    empty = np.zeros_like(scene.layers[0])
    writer = write_psd if kind == "psd" else write_ora
    path = writer(tmp_path / f"e.{kind}", scene.background, [scene.layers[0], empty],
                  ["bg", "star", "nothing"])
    check = check_layered_file(path)
    assert check.scene.layer_prompts == ["star"]
    assert check.skipped == ["empty layer 'nothing'"] and check.empty_layers == 1
    scenes, report = import_layered_files([path])
    assert report.counts["empty layers skipped"] == 1
    assert "1 empty layers skipped" in report.summary()


def test_an_empty_layer_in_a_blend_mode_is_skipped_not_refused(tmp_path):
    path = _psd(tmp_path / "e.psd", [("ground", _ground(), 0, 0, {}),
                                     ("unused", _rgba(4, 4, (9, 9, 9), 0), 2, 2,
                                      {"blend_mode": BlendMode.OVERLAY})])
    check = check_layered_file(path)
    assert check.scene is not None and check.skipped == ["empty layer 'unused'"]


def test_ora_stack_opacity_and_composite_ops(tmp_path, scene, names):
    path = write_ora(tmp_path / "s.ora", scene.background, scene.layers, names)

    def edit(name, change, drop_merged=True):
        out = tmp_path / name
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename == "mergedimage.png" and drop_merged:
                    continue
                if info.filename == "stack.xml":
                    data = change(data.decode()).encode()
                dst.writestr(info, data)
        return out

    def half_top_hide_second(text):
        text = text.replace('opacity="1.000"', 'opacity="0.5"', 1)  # top layer
        text = text.replace('visibility="visible"', 'visibility="hidden"', 2)
        return text.replace('visibility="hidden"', 'visibility="visible"', 1)

    back = import_ora(edit("faded.ora", half_top_hide_second))
    assert back.layer_prompts == [scene.layer_prompts[0], scene.layer_prompts[2]]
    top = scene.layers[2][..., 3].astype(np.float32)
    assert np.abs(back.layers[1][..., 3] - np.rint(top * 0.5)).max() <= 0
    assert np.array_equal(back.composite, back.flatten())

    multiply = edit("multiply.ora", lambda t: t.replace('svg:src-over', 'svg:multiply', 1),
                    drop_merged=False)
    with pytest.raises(RefusedError, match=rf"layer '{scene.layer_prompts[2]}': composite-op "
                                           "svg:multiply depends on the layers below"):
        import_ora(multiply)
    empty = write_ora(tmp_path / "e.ora", scene.background, [np.zeros_like(scene.layers[0])],
                      ["bg", "spectral"])
    with zipfile.ZipFile(empty) as archive:  # MyPaint's empty layer in a blend mode
        assert archive.read("stack.xml").count(b"svg:src-over") == 2
    mypaint = tmp_path / "mypaint.ora"
    with zipfile.ZipFile(empty) as src, zipfile.ZipFile(mypaint, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "stack.xml":
                data = data.replace(b"svg:src-over", b"mypaint:spectral-wgm", 1)
            dst.writestr(info, data)
    assert check_layered_file(mypaint).skipped == ["empty layer 'spectral'"]
    krita_empty_name = edit("noname.ora", lambda t: t.replace(f'name="{names[1]}"', 'name=""'))
    with pytest.raises(RefusedError, match=r"layer 2 \(unnamed\) has no name"):
        import_ora(krita_empty_name)


def test_ora_group_opacity_over_overlapping_layers_is_merged(tmp_path):
    ground = _ground(16, 12)
    red = np.zeros((12, 16, 4), np.uint8)
    red[2:8, 2:8] = (255, 0, 0, 255)
    blue = np.zeros((12, 16, 4), np.uint8)
    blue[4:10, 5:11] = (0, 0, 255, 255)
    folded = alpha_composite(ground, [np.where(red[..., 3:] > 0, red, 0)])
    group = np.zeros((12, 16, 4), np.float32)
    for layer in (red, blue):
        alpha = layer[..., 3:] / 255.0
        group[..., :3] = layer[..., :3] / 255.0 * alpha + group[..., :3] * (1 - alpha)
        group[..., 3:] = alpha + group[..., 3:] * (1 - alpha)
    merged = (ground / 255.0) * (1 - 0.5 * group[..., 3:]) + 0.5 * group[..., :3]
    assert folded.shape == merged.shape
    xml = (
        '<?xml version="1.0"?><image w="16" h="12"><stack>'
        '<stack name="pair" opacity="0.5"><layer name="blue" src="data/b.png"/>'
        '<layer name="red" src="data/r.png"/></stack>'
        '<layer name="ground" src="data/g.png"/></stack></image>'
    )
    path = tmp_path / "g.ora"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", "image/openraster")
        archive.writestr("stack.xml", xml)
        for name, pixels in (("b", blue), ("r", red), ("g", ground)):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            archive.writestr(f"data/{name}.png", buffer.getvalue())
        buffer = io.BytesIO()
        Image.fromarray(np.rint(merged * 255).astype(np.uint8)).save(buffer, format="PNG")
        archive.writestr("mergedimage.png", buffer.getvalue())
    check = check_layered_file(path)
    assert check.scene.layer_prompts == ["pair"]
    assert check.scene.meta["import"]["max_difference"] <= 1


# -- damaged files, parser messages, the CLI report ----------------------------------------
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
    first = report.skipped[0].path
    assert report.summary().count(first) == 1  # the reason already names the file


def test_parser_warnings_are_collected_not_printed(tmp_path, capsys, monkeypatch):
    import dreamlayer_jax.data.psd_import as psd_import

    path = _psd(tmp_path / "w.psd", [("ground", _ground(), 0, 0, {})])
    opened = psd_import.PSDImage.open

    def noisy_open(*args, **kwargs):
        logging.getLogger("psd_tools.api.psd_image").warning("Channels mismatch: %d", 3)
        return opened(*args, **kwargs)

    monkeypatch.setattr(psd_import.PSDImage, "open", noisy_open)
    check = check_layered_file(path)
    assert check.scene is not None and check.warnings == ["Channels mismatch: 3"]
    assert capsys.readouterr().err == ""


def test_check_mode_lists_what_is_imported_baked_and_refused(tmp_path, scene, names, capsys):
    folder = tmp_path / "data"
    _write("ora", folder / "good.ora", scene, names)
    _psd(folder / "shadow.psd", [("ground", _ground(), 0, 0, {}),
                                 ("shadow", _rgba(5, 5, (90, 90, 90)), 3, 3,
                                  {"blend_mode": BlendMode.SCREEN})])
    (folder / "broken.psd").write_bytes(b"8BPS nonsense")
    assert import_layers.main(["--check", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("error  ") and "broken.psd: cannot read PSD" in out[0]
    assert out[1].startswith(f"import {folder / 'good.ora'}: 4 layers (background ")
    assert out[2] == (f"refuse {folder / 'shadow.psd'}: layer 'shadow': blend mode screen "
                      "depends on the layers below and cannot be stored as a plain RGBA layer")
    assert out[3] == ("3 files: 1 to import, 1 refused, 1 unreadable; "
                      "0 empty layers would be skipped")
    assert not (tmp_path / "out").exists()
    assert import_layers.DEFAULT_TOLERANCE == TOLERANCE

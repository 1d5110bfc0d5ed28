"""LayeredScene validation, compositing, and the scene folder format (read, write, iterate)."""

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dreamlayer_jax.data.compositing import (
    alpha_composite,
    alpha_composite_float,
    checkerboard,
    premultiply,
    unpremultiply,
)
from dreamlayer_jax.data.scene import LayeredScene, validate_box
from dreamlayer_jax.data.scene_folder import (
    iter_scene_folders,
    read_scene_folder,
    read_scene_folders,
    write_scene_folder,
)
from dreamlayer_jax.data.synthetic import SyntheticSceneGenerator
from dreamlayer_jax.errors import DataError, InputError, OutputError


@pytest.fixture(scope="module")
def scene():
    generator = SyntheticSceneGenerator(resolution=32, min_foregrounds=2, max_foregrounds=2)
    return generator.sample(3)


def _scene_args(h=8, w=10, k=1):
    rng = np.random.default_rng(0)
    return dict(
        prompt="p",
        background_prompt="bg",
        background=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        layer_prompts=["fg"] * k,
        layers=[rng.integers(0, 256, (h, w, 4), dtype=np.uint8) for _ in range(k)],
        boxes=[(0.1, 0.2, 0.5, 0.9)] * k,
        composite=rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
    )


# ---------------------------------------------------------------------------- the scene


def test_valid_scene_keeps_its_fields():
    args = _scene_args(k=2)
    scene = LayeredScene(**{**args, "boxes": [[0.1, 0.2, 0.5, 0.9], np.array([0, 0, 1, 1])]})
    assert scene.boxes == [(0.1, 0.2, 0.5, 0.9), (0.0, 0.0, 1.0, 1.0)]
    assert (scene.height, scene.width, scene.num_foregrounds) == (8, 10, 2)
    assert scene.box_pixels(0) == (1, 1, 5, 8)
    assert LayeredScene(**_scene_args(k=0)).num_foregrounds == 0


@pytest.mark.parametrize(
    "change, field",
    [
        ({"background": np.zeros((8, 10, 4), np.uint8)}, "background"),
        ({"background": np.zeros((8, 10, 3), np.float32)}, "background"),
        ({"composite": np.zeros((8, 9, 3), np.uint8)}, "composite"),
        ({"layers": [np.zeros((7, 10, 4), np.uint8)]}, r"layers\[0\]"),
        ({"layers": [np.zeros((8, 10, 3), np.uint8)]}, r"layers\[0\]"),
        ({"layer_prompts": ["a", "b"]}, "layers"),
        ({"layer_prompts": [3]}, r"layer_prompts\[0\]"),
        ({"boxes": [(0.1, 0.2, 1.5, 0.9)]}, r"boxes\[0\]"),
        ({"boxes": [(0.5, 0.2, 0.5, 0.9)]}, r"boxes\[0\]"),
        ({"boxes": [(0.1, 0.2, 0.5)]}, r"boxes\[0\]"),
        ({"prompt": None}, "prompt"),
    ],
)
def test_invalid_scene_raises_data_error_naming_the_field(change, field):
    with pytest.raises(DataError, match=field):
        LayeredScene(**{**_scene_args(), **change})


def test_validate_box_raises_the_given_error_class():
    assert validate_box((0, 0, 0.5, 1), "b") == (0.0, 0.0, 0.5, 1.0)
    for bad in [(0.2, 0, 0.1, 1), (0, 0, 1, float("nan")), "abcd", (0, 0, "x", 1), (-0.1, 0, 1, 1)]:
        with pytest.raises(InputError, match="layer 3 box"):
            validate_box(bad, "layer 3 box", InputError)


# --------------------------------------------------------------------------- compositing


def test_alpha_composite_follows_alpha_and_paint_order():
    background = np.full((2, 2, 3), 100, np.uint8)
    first = np.zeros((2, 2, 4), np.uint8)
    first[0] = (200, 0, 0, 255)  # opaque row 0
    first[1] = (0, 0, 200, 128)  # half transparent row 1
    second = np.zeros((2, 2, 4), np.uint8)
    second[0, 0] = (0, 255, 0, 255)  # over `first` at one pixel
    out = alpha_composite(background, [first, second])
    assert out.dtype == np.uint8
    assert tuple(out[0, 0]) == (0, 255, 0)
    assert tuple(out[0, 1]) == (200, 0, 0)
    assert tuple(out[1, 0]) == (50, 50, 150)  # 128/255 of the way from 100 to (0, 0, 200)
    assert np.array_equal(alpha_composite(background, []), background)
    out_float = alpha_composite_float(background / 255.0, [first, second])
    assert out_float.dtype == np.float32
    assert np.allclose(out_float * 255, out, atol=0.5)


def test_premultiply_round_trips_where_alpha_is_positive():
    rgba = np.random.default_rng(1).integers(1, 256, (4, 4, 4), dtype=np.uint8)
    pre = premultiply(rgba)
    assert np.allclose(pre[..., :3], rgba[..., :3] / 255.0 * rgba[..., 3:] / 255.0)
    assert np.allclose(unpremultiply(pre), rgba / 255.0, atol=1e-6)


def test_checkerboard_alternates_cells():
    board = checkerboard(16, 16, cell=8)
    assert board.shape == (16, 16, 3)
    assert board[0, 0, 0] != board[0, 8, 0] and board[0, 0, 0] == board[8, 8, 0]


# -------------------------------------------------------------------------- scene folders


def test_scene_folder_round_trip_is_bit_exact(tmp_path, scene):
    folder = write_scene_folder(scene, tmp_path / "s")
    spec = json.loads((folder / "scene.json").read_text())
    assert spec["layers"][1]["file"] == "layer_01.png" and spec["composite"] == "composite.png"
    back = read_scene_folder(folder)
    assert back.prompt == scene.prompt and back.background_prompt == scene.background_prompt
    assert back.layer_prompts == scene.layer_prompts and back.boxes == scene.boxes
    assert back.meta == scene.meta
    assert np.array_equal(back.background, scene.background)
    assert np.array_equal(back.composite, scene.composite)
    assert all(np.array_equal(a, b) for a, b in zip(back.layers, scene.layers))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary left over


def test_writing_over_an_existing_folder_needs_overwrite(tmp_path, scene):
    write_scene_folder(scene, tmp_path / "s")
    with pytest.raises(OutputError, match="exists"):
        write_scene_folder(scene, tmp_path / "s")
    other = LayeredScene(**{**_scene_args(32, 32, 0), "meta": {"note": "second"}})
    write_scene_folder(other, tmp_path / "s", overwrite=True)
    assert read_scene_folder(tmp_path / "s").meta == {"note": "second"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    with pytest.raises(OutputError, match="clash"):
        write_scene_folder(LayeredScene(**{**_scene_args(), "meta": {"layers": 1}}), tmp_path / "t")


def _png_16bit_rgba(path, pixels16):
    """A 16-bit-per-channel RGBA PNG (Pillow cannot write one)."""
    h, w, _ = pixels16.shape
    raw = b"".join(b"\x00" + pixels16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_16_bit_palette_and_grayscale_pngs_are_converted(tmp_path, scene):
    folder = write_scene_folder(scene, tmp_path / "s")
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (32, 32), dtype=np.uint16)
    Image.fromarray(grey * 257).save(folder / "background.png")  # 16-bit grayscale
    assert Image.open(folder / "background.png").mode.startswith("I")
    layer = rng.integers(0, 256, (32, 32, 4), dtype=np.uint16)
    _png_16bit_rgba(folder / "layer_00.png", layer * 257)
    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    index = rng.integers(0, 4, (32, 32), dtype=np.uint8)
    image = Image.frombytes("P", (32, 32), index.tobytes())
    image.putpalette(palette.flatten().tolist())
    image.info["transparency"] = 0
    image.save(folder / "layer_01.png", transparency=0)
    Image.fromarray(index * 60).save(folder / "composite.png")

    back = read_scene_folder(folder)
    assert np.array_equal(back.background, np.repeat(grey.astype(np.uint8)[..., None], 3, -1))
    assert np.array_equal(back.layers[0], layer.astype(np.uint8))
    expected_alpha = np.where(index == 0, 0, 255)
    assert np.array_equal(back.layers[1][..., 3], expected_alpha)
    assert np.array_equal(back.layers[1][..., :3][index > 0], palette[index][index > 0])
    assert np.array_equal(back.composite[..., 1], index * 60)


def _corrupt(folder, how):
    spec = json.loads((folder / "scene.json").read_text())
    if how == "png":
        (folder / "layer_01.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        return "layer_01.png"
    if how == "truncated png":
        data = (folder / "background.png").read_bytes()
        (folder / "background.png").write_bytes(data[: len(data) // 2])
        return "background.png"
    if how == "json":
        (folder / "scene.json").write_text("{not json")
        return "scene.json.*not valid JSON"
    if how == "missing field":
        del spec["layers"][1]["box"]
    elif how == "missing background prompt":
        del spec["background"]["prompt"]
    elif how == "bad box":
        spec["layers"][0]["box"] = [0.5, 0.5, 0.4, 0.9]
    elif how == "missing file":
        (folder / "layer_00.png").unlink()
        return "layer_00.png.*not found"
    elif how == "size":
        Image.new("RGB", (16, 16)).save(folder / "composite.png")
        return "composite.png.*size"
    elif how == "escape":
        spec["composite"] = "../elsewhere.png"
    (folder / "scene.json").write_text(json.dumps(spec))
    return {
        "missing field": r"layers\[1\]\.box",
        "missing background prompt": r"background\.prompt",
        "bad box": r"layers\[0\]\.box",
        "escape": "composite",
    }[how]


@pytest.mark.parametrize(
    "how",
    [
        "png",
        "truncated png",
        "json",
        "missing field",
        "missing background prompt",
        "bad box",
        "missing file",
        "size",
        "escape",
    ],
)
def test_broken_scene_folder_raises_data_error_naming_the_culprit(tmp_path, scene, how):
    folder = write_scene_folder(scene, tmp_path / "s")
    pattern = _corrupt(folder, how)
    with pytest.raises(DataError, match=pattern) as info:
        read_scene_folder(folder)
    assert str(folder) in str(info.value)


def test_iterating_skips_and_counts_broken_scenes(tmp_path, scene):
    for name in ("a", "b", "c"):
        write_scene_folder(scene, tmp_path / name)
    _corrupt(tmp_path / "b", "json")
    (tmp_path / "d").mkdir()  # not a scene at all
    (tmp_path / ".hidden").mkdir()  # an unfinished write: ignored
    scenes, report = iter_scene_folders(tmp_path)
    assert report.loaded == 0 and report.num_skipped == 0  # lazy
    assert len(list(scenes)) == 2
    assert report.loaded == 2 and report.num_skipped == 2
    assert [item.path for item in report.skipped] == [str(tmp_path / "b"), str(tmp_path / "d")]
    assert "not valid JSON" in report.skipped[0].reason
    assert "skipped 2" in report.summary()
    scenes, report = read_scene_folders(tmp_path / "a")  # a single scene folder as root
    assert len(scenes) == 1 and report.num_skipped == 0
    with pytest.raises(DataError, match="not a folder"):
        read_scene_folders(tmp_path / "nowhere")

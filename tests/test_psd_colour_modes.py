"""PSD colour modes (`data/psd_colour.py`): Lab, 16-bit, indexed and bitmap files are
converted to sRGB; CMYK without a profile, duotone and multichannel files are refused.
The layer-less files are written byte by byte here: no binary fixtures."""

import json
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms
from psd_tools import PSDImage
from psd_tools.api.layers import PixelLayer

from dreamlayer_jax.data.importers import check_layered_file, import_psd
from dreamlayer_jax.data.layer_stack import RefusedError


def _flat_psd(path, mode, depth, planes, color_mode_data=b""):
    """A layer-less PSD written byte by byte: `planes` are the raw channel planes."""
    height, width = planes[0].shape
    out = bytearray(b"8BPS" + struct.pack(">H6xHIIHH", 1, len(planes), height, width, depth,
                                          mode))
    out += struct.pack(">I", len(color_mode_data)) + color_mode_data
    out += struct.pack(">I", 0) + struct.pack(">I", 0)  # no image resources, no layers
    out += struct.pack(">H", 0)  # raw image data
    for plane in planes:
        if depth == 1:
            out += np.packbits(plane.astype(bool), axis=1).tobytes()
        else:
            out += plane.astype(">u2" if depth == 16 else np.uint8).tobytes()
    path.write_bytes(bytes(out))
    return path



def test_cmyk_without_profile_duotone_and_multichannel_are_refused(tmp_path):
    psd = PSDImage.new("CMYK", (8, 6))
    psd.append(PixelLayer.frompil(Image.new("CMYK", (8, 6), (0, 255, 255, 0)), psd, name="r"))
    psd.save(tmp_path / "cmyk.psd")
    with pytest.raises(RefusedError, match="CMYK file without a usable ICC profile"):
        import_psd(tmp_path / "cmyk.psd")
    plane = np.full((6, 8), 100, np.uint8)
    _flat_psd(tmp_path / "duo.psd", 8, 8, [plane], color_mode_data=b"\0" * 16)
    _flat_psd(tmp_path / "multi.psd", 7, 8, [plane, plane])
    for name, words in (("duo", "duotone colour mode"), ("multi", "multichannel colour mode")):
        with pytest.raises(RefusedError, match=f"{name}.psd: {words} is not supported"):
            import_psd(tmp_path / f"{name}.psd")



def test_lab_psd_is_converted_to_srgb(tmp_path):
    lab = np.zeros((6, 8, 3), np.uint8)
    lab[..., 0], lab[..., 1], lab[..., 2] = 136, 128 + 80, 128 + 67  # L* 53, a* 80, b* 67
    psd = PSDImage.new("LAB", (8, 6))
    psd.append(PixelLayer.fromarray(lab, psd, name="red"))
    psd.save(tmp_path / "lab.psd")
    back = import_psd(tmp_path / "lab.psd")  # not a white picture
    pil_lab = Image.frombytes("LAB", (1, 1), bytes([136, 80, 67]))
    want = ImageCms.profileToProfile(pil_lab, ImageCms.createProfile("LAB", 5000),
                                     ImageCms.createProfile("sRGB"), outputMode="RGB",
                                     renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    assert np.abs(back.background[0, 0].astype(int) - np.asarray(want)[0, 0]).max() <= 2
    assert back.background[0, 0, 0] > 230 and back.background[0, 0, 1:].max() < 30  # red


def test_sixteen_bit_grayscale_psd(tmp_path):
    psd = PSDImage.new("L", (8, 6), depth=16)
    psd.append(PixelLayer.fromarray(np.full((6, 8), 32896, np.uint16), psd, name="grey"))
    psd.save(tmp_path / "g16.psd")
    back = import_psd(tmp_path / "g16.psd")
    assert np.all(back.background == 128)


def test_flat_indexed_and_bitmap_files_are_background_only_scenes(tmp_path):
    index = np.zeros((6, 8), np.uint8)
    index[:, 4:] = 1
    palette = bytes([255, 0] + [0] * 254 + [0] * 256 + [0, 255] + [0] * 254)  # R, G, B
    _flat_psd(tmp_path / "indexed.psd", 2, 8, [index], color_mode_data=palette)
    bits = np.zeros((6, 8), np.uint8)
    bits[:, :4] = 1  # a set bit is black
    _flat_psd(tmp_path / "bitmap.psd", 0, 1, [bits])
    with pytest.raises(RefusedError, match=r"flat picture \(no layers\) has no layer name .*"
                                           r"\"background\" in bitmap\.json"):
        import_psd(tmp_path / "bitmap.psd")
    for name in ("indexed", "bitmap"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"background": f"a {name} picture"}))
    indexed, bitmap = import_psd(tmp_path / "indexed.psd"), import_psd(tmp_path / "bitmap.psd")
    assert indexed.background[0, 0].tolist() == [255, 0, 0]
    assert indexed.background[0, 7].tolist() == [0, 0, 255]
    assert bitmap.background[0, 0].tolist() == [0, 0, 0]
    assert bitmap.background[0, 7].tolist() == [255, 255, 255]
    assert indexed.num_foregrounds == bitmap.num_foregrounds == 0
    assert "flat picture" in check_layered_file(tmp_path / "bitmap.psd").baked[0]

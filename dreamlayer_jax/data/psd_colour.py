"""A Photoshop document's colour -> sRGB floats in [0, 1], through its ICC profile.

RGB, grayscale, CMYK and Lab documents at 8, 16 or 32 bits (32-bit values are linear
light, encoded with the sRGB curve); indexed and bitmap files without layers are read
through their palette / as black and white. Duotone, multichannel, CMYK without a usable
profile and indexed / bitmap files with layers are refused (`data/psd_import.py`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms
from psd_tools import PSDImage
from psd_tools.constants import ColorMode, Resource

from dreamlayer_jax.data.layer_stack import refuse


class DocumentColour:
    """Document colour (psd-tools' float arrays in the file's colour mode) -> sRGB."""

    def __init__(self, psd: PSDImage, path: Path, has_layers: bool, notes: list[str]):
        self.mode, self.depth = psd.color_mode, psd.depth
        # colour channels of the merged image as psd-tools reads it (indexed: via palette)
        self.channels = {ColorMode.GRAYSCALE: 1, ColorMode.BITMAP: 1, ColorMode.CMYK: 4}.get(
            self.mode, 3)
        self.transform = None
        if self.mode in (ColorMode.DUOTONE, ColorMode.MULTICHANNEL):
            raise refuse(path, f"{self.mode.name.lower()} colour mode is not supported "
                               "(convert the file to RGB)")
        if self.mode in (ColorMode.INDEXED, ColorMode.BITMAP) and has_layers:
            raise refuse(path, f"{self.mode.name.lower()} file with layers is not supported "
                               "(convert the file to RGB)")
        icc = psd.image_resources.get_data(Resource.ICC_PROFILE)
        pil_mode = {ColorMode.RGB: "RGB", ColorMode.INDEXED: "RGB", ColorMode.GRAYSCALE: "L",
                    ColorMode.CMYK: "CMYK", ColorMode.LAB: "LAB"}.get(self.mode)
        profile = None
        if self.mode == ColorMode.LAB:
            profile = ImageCms.createProfile("LAB", 5000)  # Photoshop's Lab is D50
        elif self.depth == 32:
            pass  # linear light in the profile's primaries: the sRGB curve alone (below)
        elif icc and pil_mode is not None:
            try:
                profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                description = ImageCms.getProfileDescription(profile).strip()
            except (ImageCms.PyCMSError, OSError, TypeError) as exc:
                notes.append(f"unreadable ICC profile ignored ({exc})")
                profile, description = None, ""
            if profile is not None and pil_mode == "RGB" and description.startswith("sRGB"):
                profile = None  # already sRGB: no rounding through a transform
        if profile is not None:
            try:
                self.transform = ImageCms.buildTransform(
                    profile, ImageCms.createProfile("sRGB"), pil_mode, "RGB",
                    renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
                    flags=ImageCms.Flags.BLACKPOINTCOMPENSATION)
                self.pil_mode = pil_mode
            except ImageCms.PyCMSError as exc:
                notes.append(f"ICC profile cannot be applied ({exc}); colours read as sRGB")
                self.transform = None
        if self.mode == ColorMode.CMYK and self.transform is None:
            raise refuse(path, "CMYK file without a usable ICC profile: its colours cannot "
                               "be converted faithfully")

    def __call__(self, color: np.ndarray) -> np.ndarray:
        """float `[H, W, C]` in the document's mode -> float sRGB `[H, W, 3]`."""
        color = np.asarray(color, np.float32)
        if self.depth == 32:  # linear light: encode with the sRGB curve
            linear = np.clip(color, 0.0, 1.0)
            color = np.where(linear <= 0.0031308, 12.92 * linear,
                             1.055 * np.power(linear, 1 / 2.4) - 0.055)
        if self.mode == ColorMode.CMYK:
            color = 1.0 - color[..., :4]  # stored as 1 - ink; PIL's CMYK is ink
        elif self.mode in (ColorMode.GRAYSCALE, ColorMode.BITMAP):
            color = color[..., :1]
        else:
            color = color[..., :3]
        if self.transform is None:
            return np.repeat(color, 3, axis=-1) if color.shape[-1] == 1 else color
        pixels = np.clip(np.rint(color * 255.0), 0, 255).astype(np.uint8)
        if self.pil_mode == "LAB":  # Pillow's LAB holds a* and b* as signed bytes
            pixels[..., 1:] = pixels[..., 1:] - np.uint8(128)
        image = Image.frombytes(self.pil_mode, pixels.shape[1::-1], pixels.tobytes())
        out = ImageCms.applyTransform(image, self.transform)
        return np.asarray(out, np.float32) / 255.0

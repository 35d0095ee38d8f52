"""Pillow images -> HWC uint8 RGB arrays, upright: the one conversion, for image files (``read_image``)
and the service's uploads (``api/decode.py``, which keeps its own limits and errors) alike.

What each mode becomes, as an image viewer shows it:
- RGB as it is; L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX by Pillow's own conversion.
- Transparency (RGBA, LA, PA, premultiplied RGBa/La, P with a transparent colour) is composited over
  white, rather than showing the colour hidden under a transparent pixel.
- 16-bit grey (I;16, I;16L, I;16B, I;16N) scaled to 8 bits, 65535 -> 255 (round(v / 257)): 0x8000 is
  mid-grey 128, not clipped to 255 as Pillow's ``convert`` does.
- I, Pillow's 32-bit container for grey wider than 8 bits (16-bit PGM, SGI and TIFF samples), as
  16-bit grey: values clipped to [0, 65535], then scaled the same way. Never by the image's own
  maximum, which would show a dark frame as bright as a light one.
- F (32-bit float grey, e.g. from TIFF) as float image editors do: 0.0 black, 1.0 white, clipped.

Wide grey goes through a lookup table into 8 bits, never through an int64 or float64 copy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# 16-bit value -> 8-bit value, round(v / 257): a 64 KiB table indexed by the pixels, so that no wider
# intermediate than the pixels themselves is made.
_SIXTEEN_TO_EIGHT = np.round(np.arange(65536) / 257.0).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """An HxWx3 uint8 RGB array, upright. Raises ValueError naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such image file")
    try:
        with Image.open(path) as raw:
            raw.load()
            return to_rgb_array(upright(raw))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the pixels as they are stored."""
    try:
        return ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's EXIF parser raises many types on bad data
        logger.warning("ignoring unreadable EXIF orientation: %s: %s", type(exc).__name__, exc)
        return image


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> np.ndarray[H, W, 3] uint8, a fresh writable array (see the module's docstring)."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image)
    if mode.startswith("I;16") or mode == "I":
        grey = np.array(image)  # (H, W) uint16 (any byte order) or int32
        if mode == "I":
            np.clip(grey, 0, 65535, out=grey)
        return _grey_to_rgb(_SIXTEEN_TO_EIGHT[grey])
    if mode == "F":
        grey = np.array(image)  # (H, W) float32
        np.nan_to_num(grey, copy=False)
        grey *= 255.0
        grey += 0.5
        np.clip(grey, 0.0, 255.0, out=grey)
        return _grey_to_rgb(grey.astype(np.uint8))
    if mode in ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return _over_white(image)
    return np.array(image.convert("RGB"))  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX


def _over_white(image: Image.Image) -> np.ndarray:
    """Alpha-composited over white, a band of rows at a time: each pixel as a whole-image composite gives
    it, with no full-size RGBA, white or composite copies (a 40 MP image has 160 MB in each)."""
    width, height = image.size
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(top + rows, height)))  # keeps the palette and its transparency
        band = (band.convert("LA") if band.mode == "La" else band).convert("RGBA")  # Pillow has no La -> RGBA
        white = Image.new("RGBA", band.size, (255, 255, 255, 255))
        rgb[top : top + band.height] = np.asarray(Image.alpha_composite(white, band).convert("RGB"))
    return rgb


_BAND_PIXELS = 1 << 20  # pixels per band of ``_over_white``: 4 MB per RGBA copy


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3) uint8, the grey in each channel."""
    rgb = np.empty((*grey.shape, 3), dtype=np.uint8)
    rgb[...] = grey[:, :, None]  # (H, W) -> (H, W, 3)
    return rgb

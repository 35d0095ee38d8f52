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
    """Apply the EXIF orientation, in place (Pillow's default returns a copy, a full-size one even when
    there is nothing to turn); returns ``image``. A broken EXIF block leaves the pixels as they are stored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's EXIF parser raises many types on bad data
        logger.warning("ignoring unreadable EXIF orientation: %s: %s", type(exc).__name__, exc)
    return image


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> np.ndarray[H, W, 3] uint8, a fresh writable array (see the module's docstring).

    Converted a band of rows at a time into the result, so that besides the image and the result only a
    band's worth of copies exists (a 40 MP image is 120 MB as RGB, 160 MB in each RGBA copy); each mode's
    conversion is per pixel, so the bands give what the whole image would."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        convert = _wide_grey
    elif mode == "F":
        convert = _float_grey
    elif mode in ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        convert = _over_white
    elif mode == "RGB":
        convert = np.asarray
    else:  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX by Pillow's own conversion
        convert = _pillow_rgb
    width, height = image.size
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(top + rows, height)))  # keeps the palette and its transparency
        pixels = convert(band)  # (h, W, 3) or, grey, (h, W)
        rgb[top : top + band.height] = pixels if pixels.ndim == 3 else pixels[:, :, None]  # (h, W) -> (h, W, 3)
    return rgb


_BAND_PIXELS = 1 << 20  # pixels per band of ``to_rgb_array``: 4 MB per RGBA copy


def _wide_grey(band: Image.Image) -> np.ndarray:
    grey = np.array(band)  # (h, W) uint16 (any byte order) or int32
    if band.mode == "I":
        np.clip(grey, 0, 65535, out=grey)
    return _SIXTEEN_TO_EIGHT[grey]


def _float_grey(band: Image.Image) -> np.ndarray:
    grey = np.array(band)  # (h, W) float32
    np.nan_to_num(grey, copy=False)
    grey *= 255.0
    grey += 0.5
    np.clip(grey, 0.0, 255.0, out=grey)
    return grey.astype(np.uint8)


def _over_white(band: Image.Image) -> np.ndarray:
    rgba = (band.convert("LA") if band.mode == "La" else band).convert("RGBA")  # Pillow has no La -> RGBA
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


def _pillow_rgb(band: Image.Image) -> np.ndarray:
    return np.asarray(band.convert("RGB"))

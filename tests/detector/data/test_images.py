"""detector/data/images.py: one conversion to RGB for image files and the service's uploads.

Every mode the service accepts, in every accepted format that carries it, gives the same pixels read
from a file (``read_image``) as uploaded (``api.decode.decode_image``), and the expected values at a
few hand-checked pixels. Modes that only files bring (TIFF's I and F, ...) are checked on the
conversion itself and through ``read_image``.
"""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api.decode import ALLOWED_FORMATS, decode_image
from detector.data.images import read_image, to_rgb_array

WHITE = (255, 255, 255)
B = 8  # each test image is a row of B x B blocks, one value each: JPEG keeps a flat block's value


def blocks(mode: str, values: list, palette: list[int] | None = None) -> Image.Image:
    """A B-high row of B x B blocks of ``values`` (pixel values in ``mode``)."""
    if mode.startswith("I;16"):  # Pillow's paste writes other values into 16-bit images
        row = np.repeat(np.asarray(values), B)[None, :].repeat(B, 0)  # (B, B * len(values))
        dtype = ">u2" if mode == "I;16B" else "<u2"
        return Image.frombytes(mode, (row.shape[1], B), row.astype(dtype).tobytes())
    img = Image.new(mode, (B * len(values), B))
    if palette is not None:
        img.putpalette(palette)
    for i, value in enumerate(values):
        img.paste(value, (B * i, 0, B * (i + 1), B))
    return img


PALETTE = [10, 20, 30, 200, 100, 50] + [0, 0, 0] * 254  # index 0 and 1, the rest black
# (name, image, format, save options, the RGB expected in each block, tolerance)
CASES = [
    ("1 PNG", blocks("1", [0, 255]), "PNG", {}, [(0, 0, 0), WHITE], 0),
    ("1 BMP", blocks("1", [0, 255]), "BMP", {}, [(0, 0, 0), WHITE], 0),
    ("L PNG", blocks("L", [0, 77, 255]), "PNG", {}, [(0, 0, 0), (77, 77, 77), WHITE], 0),
    ("L BMP", blocks("L", [0, 77, 255]), "BMP", {}, [(0, 0, 0), (77, 77, 77), WHITE], 0),
    ("L JPEG", blocks("L", [0, 77, 255]), "JPEG", {"quality": 95}, [(0, 0, 0), (77, 77, 77), WHITE], 2),
    # Alpha over white: opaque keeps its grey, transparent is white, black at 128/255 is 255 - 128.
    ("LA PNG", blocks("LA", [(100, 255), (100, 0), (0, 128)]), "PNG", {}, [(100,) * 3, WHITE, (127,) * 3], 0),
    ("P PNG", blocks("P", [0, 1], PALETTE), "PNG", {}, [(10, 20, 30), (200, 100, 50)], 0),
    ("P BMP", blocks("P", [0, 1], PALETTE), "BMP", {}, [(10, 20, 30), (200, 100, 50)], 0),
    ("P GIF", blocks("P", [0, 1], PALETTE), "GIF", {}, [(10, 20, 30), (200, 100, 50)], 0),
    ("P+transparency PNG", blocks("P", [0, 1], PALETTE), "PNG", {"transparency": 0}, [WHITE, (200, 100, 50)], 0),
    ("P+transparency GIF", blocks("P", [0, 1], PALETTE), "GIF", {"transparency": 0}, [WHITE, (200, 100, 50)], 0),
    ("RGB PNG", blocks("RGB", [(1, 2, 3), (250, 128, 0)]), "PNG", {}, [(1, 2, 3), (250, 128, 0)], 0),
    ("RGB BMP", blocks("RGB", [(1, 2, 3), (250, 128, 0)]), "BMP", {}, [(1, 2, 3), (250, 128, 0)], 0),
    ("RGB WEBP", blocks("RGB", [(1, 2, 3), (250, 128, 0)]), "WEBP", {"lossless": True}, [(1, 2, 3), (250, 128, 0)], 0),
    ("RGB JPEG", blocks("RGB", [(0, 0, 255), (250, 128, 0)]), "JPEG", {"quality": 95}, [(0, 0, 255), (250, 128, 0)], 4),
    ("RGBA PNG", blocks("RGBA", [(200, 100, 0, 255), (200, 100, 0, 0), (0, 0, 0, 128)]), "PNG", {},
     [(200, 100, 0), WHITE, (127,) * 3], 0),
    ("RGBA WEBP", blocks("RGBA", [(200, 100, 0, 255), (200, 100, 0, 0), (0, 0, 0, 128)]), "WEBP", {"lossless": True},
     [(200, 100, 0), WHITE, (127,) * 3], 0),
    # 16-bit grey to 8 bits as round(v / 257): full scale is 255, 0x8000 mid-grey, 200 almost black.
    ("I;16 PNG", blocks("I;16", [0, 200, 25700, 32768, 65535]), "PNG", {},
     [(0,) * 3, (1,) * 3, (100,) * 3, (128,) * 3, WHITE], 0),
    # Pillow's CMYK -> RGB: R = 255 - C - K (clipped), and so on.
    ("RGB MPO", blocks("RGB", [(0, 0, 255), (250, 128, 0)]), "MPO",
     {"quality": 95, "save_all": True, "append_images": [Image.new("RGB", (2 * B, B), (255, 0, 0))]},
     [(0, 0, 255), (250, 128, 0)], 4),  # the first frame, not the red second one
    ("CMYK JPEG", blocks("CMYK", [(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)]), "JPEG", {"quality": 95},
     [WHITE, (0, 255, 255), (0, 0, 0)], 4),
]


@pytest.mark.parametrize("name, image, fmt, options, expected, tolerance", CASES, ids=[c[0] for c in CASES])
def test_files_and_uploads_give_the_same_expected_pixels(tmp_path: Path, name, image, fmt, options, expected,
                                                         tolerance) -> None:
    assert fmt in ALLOWED_FORMATS
    data = io.BytesIO()
    image.save(data, format=fmt, **options)
    decoded_mode = Image.open(io.BytesIO(data.getvalue())).mode
    assert decoded_mode == name.split()[0].split("+")[0]  # the case tests the mode it names
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(data.getvalue())

    from_file = read_image(path)
    uploaded = decode_image(data.getvalue(), max_pixels=10**6)
    assert from_file.dtype == uploaded.dtype == np.uint8 and from_file.shape == (B, B * len(expected), 3)
    assert np.array_equal(from_file, uploaded)
    for i, rgb in enumerate(expected):
        centre = from_file[B // 2, B * i + B // 2].astype(int)
        assert np.abs(centre - rgb).max() <= tolerance, (i, centre.tolist(), rgb)


def test_the_service_takes_every_format_the_cases_cover() -> None:
    assert {case[2] for case in CASES} == set(ALLOWED_FORMATS)


def _orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value  # Orientation
    return exif.tobytes()


@pytest.mark.parametrize("exif, shape", [
    (_orientation(6), (2 * B, B, 3)),  # shown turned a quarter clockwise
    (b"garbage-exif", (B, 2 * B, 3)),  # unreadable: the pixels as stored, for files as for uploads
], ids=["orientation 6", "broken EXIF"])
def test_files_and_uploads_are_turned_upright_alike(tmp_path: Path, exif, shape) -> None:
    data = io.BytesIO()
    blocks("RGB", [(255, 255, 255), (0, 0, 0)]).save(data, format="PNG", exif=exif)  # white left, black right
    path = tmp_path / "turned.png"
    path.write_bytes(data.getvalue())
    from_file = read_image(path)
    assert from_file.shape == shape
    assert np.array_equal(from_file, decode_image(data.getvalue(), max_pixels=10**6))
    assert from_file[1, 1].tolist() == [255, 255, 255] and from_file[-2, -2].tolist() == [0, 0, 0]


@pytest.mark.parametrize("mode, values, expected", [
    # Pillow's container for wide grey, read as 16 bits: clipped to [0, 65535], then round(v / 257).
    ("I", [-5, 0, 200, 25700, 65535, 70000], [0, 0, 1, 100, 255, 255]),
    ("I;16B", [0, 200, 32768, 65535], [0, 1, 128, 255]),
    ("I;16L", [0, 200, 32768, 65535], [0, 1, 128, 255]),
    # Float grey as editors show it: 0.0 black, 1.0 white, clipped, rounded.
    ("F", [-1.0, 0.0, 0.5, 1.0, 2.0, float("nan")], [0, 0, 128, 255, 255, 0]),
])
def test_wide_grey_is_scaled_to_eight_bits_the_way_a_viewer_shows_it(mode, values, expected) -> None:
    out = to_rgb_array(blocks(mode, values))
    assert out.dtype == np.uint8 and out.shape == (B, B * len(values), 3)
    assert out[B // 2, B // 2 :: B].tolist() == [[v] * 3 for v in expected]


@pytest.mark.parametrize("mode, value, expected", [
    ("La", (0, 0), WHITE),  # premultiplied, fully transparent
    ("PA", (1, 255), (200, 100, 50)),
    ("RGBa", (0, 0, 0, 0), WHITE),
    ("RGBX", (5, 6, 7, 0), (5, 6, 7)),
    ("YCbCr", (128, 128, 128), (128, 128, 128)),  # grey: no chroma
    ("HSV", (0, 0, 255), WHITE),
])
def test_other_modes_files_may_bring(mode, value, expected) -> None:
    img = blocks(mode, [value], PALETTE if mode == "PA" else None)
    assert tuple(to_rgb_array(img)[B // 2, B // 2]) == expected


@pytest.mark.parametrize("mode, values, expected", [("I", [200, 65535], [1, 255]), ("F", [0.25, 1.0], [64, 255])])
def test_tiff_files_of_wide_grey(tmp_path: Path, mode, values, expected) -> None:
    path = tmp_path / "grey.tif"
    blocks(mode, values).save(path)
    assert Image.open(path).mode == mode
    assert read_image(path)[B // 2, B // 2 :: B, 0].tolist() == expected


def test_sixteen_bit_grey_makes_no_wide_copy() -> None:
    """No int64 or float64 intermediate: the peak stays under what one int64 copy alone would take."""
    img = Image.fromarray(np.full((500, 800), 40000, np.uint16))
    assert img.mode == "I;16"
    tracemalloc.start()
    try:
        out = to_rgb_array(img)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (out == 156).all()  # round(40000 / 257)
    assert peak < 8 * 500 * 800


def test_the_result_is_a_fresh_writable_array() -> None:
    img = blocks("RGB", [(1, 2, 3)])
    out = to_rgb_array(img)
    out[0, 0] = 0
    assert out.flags.writeable and img.getpixel((0, 0)) == (1, 2, 3)


def _image_of_mode(mode: str, rng: np.random.Generator) -> Image.Image:
    if mode in ("P", "P+transparency"):
        image = Image.fromarray(rng.integers(0, 256, (97, 61), dtype=np.uint8), "P")
        image.putpalette(rng.integers(0, 256, 768).astype(np.uint8).tobytes())
        if mode == "P+transparency":
            image.info["transparency"] = 5
        return image
    if mode in ("I;16", "I"):
        return Image.fromarray(rng.integers(0, 65536, (97, 61)).astype(np.uint16)).convert(mode) if mode == "I" \
            else Image.fromarray(rng.integers(0, 65536, (97, 61)).astype(np.uint16))
    if mode == "F":
        return Image.fromarray(rng.uniform(-0.2, 1.2, (97, 61)).astype(np.float32))
    return Image.fromarray(rng.integers(0, 256, (97, 61, 4), dtype=np.uint8), "RGBA").convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "CMYK", "RGBA", "LA", "PA", "P", "P+transparency", "I;16", "I", "F"])
def test_converted_band_by_band_equals_the_whole_image_at_once(mode, monkeypatch):
    from detector.data import images

    image = _image_of_mode(mode, np.random.default_rng(0))
    whole = to_rgb_array(image)  # 97 x 61 pixels: one band
    monkeypatch.setattr(images, "_BAND_PIXELS", 61 * 10 + 7)  # bands of 10 rows, the last one short
    banded = to_rgb_array(image)
    assert banded.shape == (97, 61, 3) and banded.flags.writeable
    assert np.array_equal(banded, whole)
    assert len(np.unique(whole)) > 1  # not a flat image compared with itself


def test_alpha_over_white_equals_pillows_whole_image_composite(monkeypatch):
    from detector.data import images

    image = _image_of_mode("RGBA", np.random.default_rng(1))
    whole = np.array(Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB"))
    monkeypatch.setattr(images, "_BAND_PIXELS", 61 * 10 + 7)
    assert np.array_equal(to_rgb_array(image), whole)

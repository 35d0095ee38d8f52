"""api/decode.py: every accepted format and mode becomes HWC uint8 RGB; every bad input gets its
own error class; the body limit holds with and without Content-Length."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from api.decode import BodySizeLimit, ImageTooLarge, InvalidImage, UnsupportedImage, decode_image
from tests.api.api_images import encode, gradient, jpeg, jpeg_with_orientation, png, png_header_only

MAX_PIXELS = 1_000_000


def decode(data: bytes) -> np.ndarray:
    return decode_image(data, max_pixels=MAX_PIXELS)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_allowed_formats_give_hwc_uint8_rgb(fmt):
    out = decode(encode(gradient(64, 48), fmt))
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8 and out.flags.writeable


def test_png_is_lossless():
    img = gradient(64, 48)
    assert np.array_equal(decode(encode(img, "PNG")), np.asarray(img))


def test_gif_and_mpo_give_their_first_frame():
    first, second = gradient(32, 16), Image.new("RGB", (32, 16), (255, 0, 0))
    gif = encode(first, "GIF", save_all=True, append_images=[second])
    mpo = encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    for data in (gif, mpo):
        out = decode(data)
        assert out.shape == (16, 32, 3)
        assert out[:, :, 0].mean() < 200  # not the all-red second frame


@pytest.mark.parametrize("orientation, shape", [(1, (20, 40, 3)), (3, (20, 40, 3)), (6, (40, 20, 3)), (8, (40, 20, 3))])
def test_exif_orientation_is_applied(orientation, shape):
    assert decode(jpeg_with_orientation(40, 20, orientation)).shape == shape


def test_exif_rotation_moves_the_pixels():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs 90 degrees clockwise
    out = decode(encode(img, "PNG", exif=exif.tobytes()))
    assert out.shape == (40, 20, 3)
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # the left band is now on top


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "CMYK", "I;16"])
def test_modes_are_converted_to_rgb(mode):
    img = gradient(32, 24, "RGB" if mode == "I;16" else mode)
    if mode == "I;16":
        img = Image.fromarray(np.full((24, 32), 65535, np.uint16))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode(encode(img, fmt))
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    if mode == "I;16":  # 16-bit full scale is 8-bit full scale, not clipped garbage
        assert (out == 255).all()


def test_sixteen_bit_is_scaled_to_eight_bits():
    img = Image.fromarray(np.full((8, 8), 0x8000, np.uint16))  # mid-grey in 16 bits
    out = decode(encode(img, "PNG"))
    assert (out == 0x80).all()


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent black
    assert (decode(encode(rgba, "PNG")) == 255).all()
    palette = Image.new("P", (8, 8), 0)
    palette.info["transparency"] = 0
    assert (decode(encode(palette, "PNG", transparency=0)) == 255).all()


def test_too_many_pixels_is_refused_before_decoding():
    with pytest.raises(ImageTooLarge, match="1001x1000"):
        decode(png(1001, 1000))


def test_decompression_bomb_header_is_refused():
    with pytest.raises(ImageTooLarge):
        decode(png_header_only(100_000, 100_000))  # 10 GP, over Pillow's own guard too


def test_empty_body():
    with pytest.raises(InvalidImage, match="empty"):
        decode(b"")


def test_truncated_image():
    data = jpeg(256, 256)
    with pytest.raises(InvalidImage, match="JPEG"):
        decode(data[: len(data) // 2])


def test_decode_errors_say_what_is_wrong_in_words_not_as_exceptions(monkeypatch):
    """Pillow's sentence about the data reaches the client; an exception's type, or the text of one
    that is a decoder tripping (it may name server internals), does not."""
    with pytest.raises(InvalidImage) as truncated:
        decode(png(128, 128)[:300])
    assert str(truncated.value) == "cannot decode the PNG image: image file is truncated"

    def trip(self):
        raise IndexError("list index out of range in /srv/detector/site-packages/PIL/PngImagePlugin.py")

    monkeypatch.setattr(ImageFile.ImageFile, "load", trip)
    with pytest.raises(InvalidImage) as tripped:
        decode(png(16, 16))
    assert str(tripped.value) == "cannot decode the PNG image: the data is corrupt or cut short"


@pytest.mark.parametrize("data", [b"hello, not an image", b"%PDF-1.4\n" + bytes(100), bytes(range(256)) * 4])
def test_not_an_image(data):
    with pytest.raises(UnsupportedImage, match="not a recognised image"):
        decode(data)


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PPM"])
def test_format_outside_the_list_is_named(fmt):
    with pytest.raises(UnsupportedImage, match=f"{fmt} images are not supported"):
        decode(encode(gradient(16, 16), fmt))


# ---- BodySizeLimit


def _echo_app(limit: int) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"received": len(await request.body())})

    return Starlette(routes=[Route("/", echo, methods=["POST"])], middleware=[Middleware(BodySizeLimit, max_bytes=limit)])


def test_body_limit_with_content_length():
    client = TestClient(_echo_app(100))
    assert client.post("/", content=b"x" * 100).json() == {"received": 100}
    response = client.post("/", content=b"x" * 101)
    assert response.status_code == 413 and "100 bytes" in response.json()["detail"]


def test_body_limit_when_chunked_without_content_length():
    client = TestClient(_echo_app(100))
    chunks = iter([b"x" * 60, b"x" * 60, b"x" * 60])
    response = client.post("/", content=chunks)
    assert response.request.headers.get("content-length") is None
    assert response.status_code == 413
    assert client.post("/", content=iter([b"x" * 50, b"x" * 50])).json() == {"received": 100}


def test_work_slots_let_limit_requests_in_at_once_and_count_the_others():
    import asyncio

    from api.decode import WorkSlots

    slots = WorkSlots(2)
    inside, most, waiting_seen = 0, 0, []

    async def one():
        nonlocal inside, most
        async with slots.slot():
            inside += 1
            most = max(most, inside)
            waiting_seen.append(slots.waiting)
            await asyncio.sleep(0.01)
            inside -= 1

    async def main():
        tasks = [asyncio.create_task(one()) for _ in range(5)]
        await asyncio.sleep(0.005)
        waiting = slots.waiting  # two inside, three waiting (they count toward the queue)
        await asyncio.gather(*tasks)
        return waiting

    assert asyncio.run(main()) == 3
    assert most == 2 and len(waiting_seen) == 5
    assert slots.waiting == 0


def test_work_slots_refuse_a_limit_below_one():
    import pytest

    from api.decode import WorkSlots

    with pytest.raises(ValueError, match="limit"):
        WorkSlots(0)

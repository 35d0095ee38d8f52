"""A corpus of bad and unusual inputs against POST /detect (and /detect/render): each gets the status
it should, with a message that says why, never a 5xx, and /healthz keeps answering.

tests/api already covers, and this corpus does not repeat: an empty file or body, a truncated JPEG,
plain text named .jpg, an RGB TIFF, a JSON body, no 'image' field, too many pixels, a bomb PNG
header, a raw body over the limit with and without Content-Length, the out-of-range query values
of test_bad_query_values_get_422_with_a_message, and L/RGBA/CMYK/P/1 images being accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.api_images import encode, gradient, jpeg, png
from tests.api.serving import serving
from tests.reliability import corpus as c
from tests.reliability import tally

MAX_BODY = 2_000_000
MAX_PIXELS = 1_000_000
ALL = "score_threshold=0&max_detections=1000"  # a random-init model scores low: keep everything


def upload(data: bytes, name: str = "image.jpg", content_type: str = "image/jpeg") -> dict:
    return {"files": {"image": (name, data, content_type)}}


def raw(data: bytes, content_type: str = "image/jpeg") -> dict:
    return {"content": data, "headers": {"content-type": content_type}}


def form(body: bytes, content_type: str = f"multipart/form-data; boundary={c.BOUNDARY}") -> dict:
    return raw(body, content_type)


@dataclass(frozen=True)
class Case:
    name: str
    request: Callable[[], dict]  # -> keyword arguments of client.post; built lazily (some are large)
    status: int
    message: str = ""  # in the answer's "detail"
    query: str = ALL


def _refused() -> Iterator[Case]:
    """Inputs that must be refused (4xx): cheap, as they never reach the model."""
    # Not images, or broken ones
    yield Case("random-bytes", lambda: upload(c.random_bytes(4096)), 415, "not a recognised image")
    yield Case("html-as-raw-jpeg", lambda: raw(b"<html><script>alert(1)</script></html>"), 415, "not a recognised")
    yield Case("truncated-png", lambda: upload(png(128, 128)[:300], "a.png", "image/png"), 422, "cannot decode the PNG")
    yield Case("png-signature-only", lambda: upload(png()[:8], "a.png", "image/png"), 415, "not a recognised image")
    yield Case("truncated-gif", lambda: upload(_half(encode(gradient(64, 64, "P"), "GIF")), "a.gif"), 422, "GIF")
    yield Case("truncated-webp", lambda: upload(encode(gradient(), "WEBP")[:60], "a.webp"), 422, "")
    yield Case("truncated-bmp", lambda: upload(encode(gradient(), "BMP")[:500], "a.bmp"), 422, "BMP")
    yield Case("png-zero-width", lambda: upload(c.raw_png(0, 10)), 415, "not a recognised image")
    # Bombs: a small file that claims, or really holds, far more pixels than allowed
    yield Case("png-10000x10000-of-zeros", lambda: upload(c.png_zero_bomb(10_000, 10_000)), 413, "10000x10000")
    yield Case("jpeg-claims-65500x65500", lambda: upload(c.jpeg_claiming(65_500, 65_500)), 413, "pixels")
    yield Case("gif-screen-65535x65535", lambda: upload(c.gif_claiming_screen(65_535, 65_535)), 413, "pixels")
    yield Case("gif-frame-60000x60000", lambda: upload(c.gif_claiming_frame(60_000, 60_000)), 413, "pixels")
    yield Case("bmp-claims-60000x60000", lambda: upload(c.bmp_claiming(60_000, 60_000)), 413, "pixels")
    yield Case("bmp-negative-height", lambda: upload(c.bmp_claiming(10, -2_147_483_647)), 413, "pixels")
    yield Case("png-2147483647x1", lambda: upload(c.raw_png(2**31 - 1, 1, pixels=b"")), 413, "pixels")
    # Extreme aspect ratios: legal pixel counts the model cannot scale (a 500 before the fix)
    yield Case("aspect-2000x1", lambda: upload(png(2000, 1), "a.png"), 422, "2000x1")
    yield Case("aspect-1x2000", lambda: upload(png(1, 2000), "a.png"), 422, "100:1")
    yield Case("aspect-1000x3", lambda: upload(jpeg(1000, 3)), 422, "100:1")
    # Oversized PNG text and profile chunks (inflate to 50 MB)
    for kind in (b"zTXt", b"iTXt", b"iCCP"):
        yield Case(f"png-{kind.decode()}-bomb", lambda kind=kind: upload(c.png_bomb_chunk(kind)), 422, "too large")
    # Formats outside the allowed list, named in the answer where Pillow knows them
    yield Case("pdf", lambda: upload(c.saved_as("PDF"), "a.pdf", "application/pdf"), 415, "not a recognised image")
    yield Case("eps", lambda: upload(c.saved_as("EPS"), "a.eps"), 415, "EPS images are not supported")
    yield Case("fits", lambda: upload(c.fits(), "a.fits"), 415, "FITS images are not supported")
    yield Case("psd", lambda: upload(c.psd(), "a.psd"), 415, "PSD images are not supported")
    for mode in ("F", "I;16", "CMYK", "LAB", "1", "YCbCr"):
        yield Case(f"tiff-{mode}", lambda mode=mode: upload(c.saved_as("TIFF", mode), "a.tif"), 415, "TIFF images")
    for fmt in ("JPEG2000", "ICNS", "SGI", "TGA", "PCX", "DDS", "QOI", "IM", "ICO", "PPM"):
        yield Case(f"{fmt.lower()}", lambda fmt=fmt: upload(c.saved_as(fmt)), 415, f"{fmt} images are not supported")
    yield Case("xbm", lambda: upload(c.saved_as("XBM", "1")), 415, "XBM images are not supported")
    yield Case("svg", lambda: upload(c.svg(), "a.svg", "image/svg+xml"), 415, "not a recognised image")
    # Polyglots that do not start as an allowed image
    yield Case("pdf-then-png", lambda: upload(c.pdf_then_png()), 415, "not a recognised image")
    yield Case("gif-javascript", lambda: upload(c.gif_javascript(), "a.gif"), 415, "not a recognised image")
    # Multipart bodies over the limit, with and without Content-Length
    over = c.random_bytes(MAX_BODY + 1000)
    yield Case("multipart-over-limit", lambda: upload(over), 413, f"larger than {MAX_BODY} bytes")
    body = c.multipart(c.part("image", over))
    chunks = [body[i : i + 500_000] for i in range(0, len(body), 500_000)]
    yield Case("multipart-chunked-over-limit", lambda: form(iter(chunks)), 413, f"larger than {MAX_BODY} bytes")
    # Malformed multipart
    good = c.multipart(c.part("image", jpeg()))
    other = "multipart/form-data; boundary=other"
    yield Case("multipart-wrong-boundary", lambda: form(good, other), 400, "Invalid multipart")
    yield Case("multipart-no-boundary", lambda: form(good, "multipart/form-data"), 400, "boundary")
    yield Case("multipart-empty-boundary", lambda: form(good, "multipart/form-data; boundary="), 400, "multipart")
    yield Case("multipart-garbage", lambda: form(b"garbage" * 100), 400, "Invalid multipart")
    yield Case("multipart-unterminated", lambda: form(good[:-40]), 422, "'image'")
    yield Case("multipart-empty", lambda: form(b""), 422, "'image'")
    empty_parts = c.multipart(*(c.part(f"f{i}", b"", filename=None) for i in range(1000)))
    yield Case("multipart-1000-empty-parts", lambda: form(empty_parts), 400, "Too many fields")
    huge_field = c.multipart(c.part("note", b"a" * 1_500_000, filename=None), c.part("image", jpeg()))
    yield Case("multipart-1.5MB-text-field", lambda: form(huge_field), 400, "exceeded maximum size")
    two = c.multipart(c.part("image", jpeg()), c.part("image", jpeg()))
    yield Case("multipart-two-files", lambda: form(two), 400, "Too many files")
    headers = c.multipart(c.part("image", jpeg(), extra_headers=b"X-Pad: x\r\n" * 5000))
    yield Case("multipart-5000-part-headers", lambda: form(headers), 400, "multipart")
    nameless = c.multipart(f"--{c.BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n".encode() + jpeg() + b"\r\n")
    yield Case("multipart-part-without-name", lambda: form(nameless), 400, "name")
    long_name = c.multipart(c.part("image", jpeg(), filename="a" * 100_000 + ".jpg"))
    yield Case("multipart-100kB-filename", lambda: form(long_name), 400, "")
    # Requests that are not image uploads at all
    yield Case("no-content-type", lambda: {"content": jpeg()}, 415, "multipart/form-data")
    yield Case("text-plain", lambda: raw(jpeg(), "text/plain"), 415, "'text/plain'")
    # Bad query values beyond tests/api's
    for query, message in [
        ("score_threshold=nan", "score_threshold"), ("score_threshold=inf", "score_threshold"),
        ("score_threshold=-inf", "score_threshold"), ("score_threshold=%ZZ", "score_threshold"),
        ("score_threshold=0.5&score_threshold=x", "score_threshold"), ("score_threshold=", "score_threshold"),
        ("max_detections=1e400", "max_detections"), ("max_detections=99999999999999999999999", "max_detections"),
        ("max_detections=1.5", "max_detections"), ("max_detections=-0", "max_detections"),
        ("masks=RLE", "masks"), ("masks=", "masks"), ("keypoints=2", "keypoints"),
        ("classes=%00", "unknown classes"), ("classes=%ZZ", "unknown classes"), ("classes=%C3%A9", "unknown classes"),
        ("classes=" + "a" * 10_000, "unknown classes"),
    ]:  # fmt: skip
        yield Case(f"query-{query[:40]}", lambda: upload(jpeg()), 422, message, query=query)


def _accepted() -> Iterator[Case]:
    """Unusual but valid inputs: converted and detected (200, detections found). Each costs a forward."""
    yield Case("png-1000x1000-the-largest-allowed", lambda: upload(png(1000, 1000), "a.png"), 200)
    yield Case("aspect-1000x10-the-most-allowed", lambda: upload(png(1000, 10), "a.png"), 200)
    yield Case("png-1.5MB-text-chunk", lambda: upload(c.png_with_text(1_500_000), "a.png"), 200)
    for colour_type, what in [(0, "grey"), (2, "rgb"), (4, "grey-alpha"), (6, "rgba")]:
        yield Case(f"png-16-bit-{what}", lambda ct=colour_type: upload(c.png16(ct), "a.png"), 200)
    yield Case("png-1-bit", lambda: upload(encode(gradient(40, 30, "1"), "PNG"), "a.png"), 200)
    yield Case("png-LA", lambda: upload(encode(gradient(40, 30, "LA"), "PNG"), "a.png"), 200)
    yield Case("png-palette-transparency", lambda: upload(c.palette_with_transparency(), "a.png"), 200)
    yield Case("jpeg-then-zip-polyglot", lambda: upload(c.jpeg_then_zip()), 200)
    yield Case("jpeg-html-php-comment", lambda: upload(c.jpeg_with_html_comment()), 200)
    for orientation in (0, 9, 65535):  # outside EXIF's 1-8: the pixels are used as stored
        exif_jpeg = c.jpeg_with_exif(orientation=orientation)
        yield Case(f"exif-orientation-{orientation}", lambda data=exif_jpeg: upload(data), 200)
    yield Case("exif-garbage", lambda: upload(c.jpeg_with_exif(raw=b"Exif\x00\x00" + b"\xff" * 64)), 200)
    yield Case("uppercase-raw-content-type", lambda: raw(png(40, 30), "Image/PNG; charset=binary"), 200)


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


CASES = list(_refused()) + list(_accepted())
REFUSED = [case for case in CASES if case.status != 200]


@pytest.fixture(scope="module")
def client(predictor) -> Iterator[TestClient]:
    with serving(predictor, max_wait_ms=5, max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS) as client:
        yield client


def _check(client: TestClient, path: str, case: Case):
    response = client.post(f"{path}?{case.query}", **case.request())
    tally.bad_input(f"{path} {case.name}", response.status_code)
    assert response.status_code < 500, f"{case.name}: {response.status_code} {response.text[:300]}"
    assert response.status_code == case.status, f"{case.name}: {response.status_code} {response.text[:300]}"
    if case.status != 200:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and case.message in detail, detail
    assert client.get("/healthz").status_code == 200
    return response


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_detect(client, case):
    response = _check(client, "/detect", case)
    if case.status == 200:
        body = response.json()
        assert body["timings"]["inference_ms"] > 0, "converted and run through the model"
        # The built-in model finds something in every accepted image but the 10-pixel strip, which its
        # resizing leaves 4 px high: smaller than anything it learned.
        assert body["detections"] or case.name == "aspect-1000x10-the-most-allowed", case.name
        assert "<script>" not in response.text and "<?php" not in response.text


@pytest.mark.parametrize("case", REFUSED, ids=[case.name for case in REFUSED])
def test_render_refuses_the_same(client, case):
    _check(client, "/detect/render", case)


def test_other_methods_and_paths(client):
    for method, path, status in [
        ("GET", "/detect", 405), ("PUT", "/detect", 405), ("POST", "/nope", 404), ("DELETE", "/healthz", 405),
        ("GET", "/static/..%2F..%2Fapi%2Fsettings.py", 404),
    ]:  # fmt: skip
        response = client.request(method, path)
        tally.bad_input(f"{method} {path}", response.status_code)
        assert response.status_code == status, (method, path, response.text)
    assert client.get("/healthz").status_code == 200


# ---- files with more than one frame: the first is used


@pytest.mark.parametrize("fmt", ["GIF", "MPO", "PNG", "WEBP"])  # PNG: animated PNG (APNG)
def test_multi_frame_files_give_the_first_frames_detections(client, predictor, fmt):
    data, first_frame = c.animated(fmt)
    response = _check(client, "/detect", Case(f"animated-{fmt}", lambda: upload(data, f"a.{fmt.lower()}"), 200))
    expected = predictor.to_json(predictor.predict([first_frame])[0].select())
    assert {k: response.json()[k] for k in ("width", "height", "detections")} == expected


# ---- EXIF orientation: detections come back in upright coordinates


# Orientation -> the stored pixels of an upright image (the inverse of what a viewer applies).
_STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transposed
    6: lambda a: np.rot90(a, k=1),  # the viewer turns it 90 degrees clockwise
    7: lambda a: np.rot90(a, k=2).transpose(1, 0, 2),  # transverse
    8: lambda a: np.rot90(a, k=-1),  # the viewer turns it 90 degrees counter-clockwise
}


@pytest.fixture(scope="module")
def upright(predictor) -> tuple[np.ndarray, dict]:
    """An asymmetric image (white block top-left of centre) and its detections, from the model directly."""
    image = np.array(gradient(64, 40))
    image[6:20, 10:30] = 255
    return image, predictor.to_json(predictor.predict([image])[0].select())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_detections(client, upright, orientation):
    image, expected = upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = np.ascontiguousarray(_STORED[orientation](image))
    data = encode(Image.fromarray(stored), "PNG", exif=exif.tobytes())  # lossless: the same pixels come back
    response = _check(client, "/detect", Case(f"exif-orientation-{orientation}", lambda: upload(data, "a.png"), 200))
    assert {k: response.json()[k] for k in ("width", "height", "detections")} == expected

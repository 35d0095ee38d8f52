"""Untrusted bytes -> an HWC uint8 RGB array (the Predictor's input contract), or a clear error.

Each error names what was wrong, in words for the client (never an exception's text: that goes to the
debug log), and maps to one HTTP status at the edge (``api/deps.py``):
``ImageTooLarge`` -> 413, ``UnsupportedImage`` -> 415, ``InvalidImage`` -> 422.
``WorkSlots`` bounds how many requests read and decode a body at once.
``BodySizeLimit`` enforces the request-body limit while the body streams in, so a client
cannot make the server buffer more than the limit, whether or not it sends Content-Length.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging

from collections.abc import AsyncIterator

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from detector.data.images import to_rgb_array, upright

logger = logging.getLogger(__name__)

# Pillow's names. GIF and MPO (multi-picture JPEG) give their first frame, as Image.open does.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "MPO")
_DECODERS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")  # Pillow opens MPO files with its JPEG decoder
# The models scale the longer side to at most ``max_size`` (384 for the smallest preset), so a side
# more than max_size times shorter than the other is scaled to 0 pixels and the forward fails (a 500).
# 100:1 holds any real photo or panorama and keeps every preset's short side at 3 pixels or more.
MAX_ASPECT_RATIO = 100


class ImageError(ValueError):
    """The request's image cannot be used; the message says why."""


class ImageTooLarge(ImageError):
    pass


class UnsupportedImage(ImageError):
    pass


class InvalidImage(ImageError):
    pass


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode one image: EXIF orientation applied, any mode converted to RGB.

    Returns np.ndarray[H, W, 3] uint8. Raises an ``ImageError`` subclass for any bad input.
    """
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    img = _open(data)
    width, height = img.size
    if width * height > max_pixels:  # checked before load(): decoding is what costs memory
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels, more than the {max_pixels} allowed")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InvalidImage(f"image is {width}x{height}: sides more than {MAX_ASPECT_RATIO}:1 apart are not supported")
    try:
        img.load()
    except Image.DecompressionBombError as exc:  # e.g. an oversized frame or chunk inside the file
        raise ImageTooLarge(str(exc)) from exc
    except MemoryError:
        raise
    # Pillow's decoders signal bad data with OSError, SyntaxError, ValueError, struct.error,
    # EOFError, IndexError ...; any of them here means the file, not the server, is broken.
    except Exception as exc:
        raise InvalidImage(f"cannot decode the {img.format} image: {_reason(exc)}") from exc
    return to_rgb_array(upright(img))  # the conversion image files get too (detector/data/images.py)


def _open(data: bytes) -> Image.Image:
    """Parse the header with only the allowed decoders; name the format of anything else."""
    try:
        img = Image.open(io.BytesIO(data), formats=_DECODERS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from exc
    except UnidentifiedImageError:
        pass
    except MemoryError:
        raise
    except Exception as exc:  # a known format whose header is broken
        raise InvalidImage(f"cannot read the image header: {_reason(exc)}") from exc
    else:
        if img.format in ALLOWED_FORMATS:
            return img
    raise UnsupportedImage(_unsupported_message(data))


# The exceptions by which Pillow describes bad data in its own words ("image file is truncated",
# "Decompressed data too large"); any other (IndexError, struct.error ...) is a decoder tripping on it.
_DESCRIBED_BY_PILLOW = (OSError, SyntaxError, ValueError, EOFError)


def _reason(exc: Exception) -> str:
    """What was wrong with the data, for the client: Pillow's own sentence (its first line, without the
    exception's type) where it gives one, else a plain phrase; the exception itself goes to the debug log."""
    logger.debug("undecodable upload: %s: %s", type(exc).__name__, exc)
    text = str(exc).splitlines()[0].strip()[:200] if str(exc).strip() else ""
    if isinstance(exc, _DESCRIBED_BY_PILLOW) and not isinstance(exc, MemoryError) and text:
        return text
    return "the data is corrupt or cut short"


def _unsupported_message(data: bytes) -> str:
    allowed = ", ".join(ALLOWED_FORMATS)
    try:  # header only, to say what it was; nothing is decoded
        with Image.open(io.BytesIO(data)) as other:
            found = other.format
    except Exception:
        found = None
    if found is None:
        return f"not a recognised image; send one of {allowed}"
    return f"{found} images are not supported; send one of {allowed}"


class WorkSlots:
    """At most ``limit`` requests at once read and decode their body (or draw their result): each holds
    a full-size image or two while it does, so this bounds that memory; the others wait, holding only
    their connection. ``waiting`` counts them, so that they can count toward the queue's bound."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.waiting = 0
        self._free = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._free.release()


class BodySizeLimit:
    """Pure ASGI middleware: 413 once a request body passes ``max_bytes``.

    A Content-Length over the limit is refused at the first read, before any byte is received; a
    chunked (or lying) body is counted as it streams and refused as soon as the count passes the
    limit. Refusing at the read, not on arrival, lets routing, auth and option checks go first.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        declared_too_large = declared.isdigit() and int(declared) > self.max_bytes
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            if declared_too_large:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            body = json.dumps({"detail": f"request body is larger than {self.max_bytes} bytes"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 413, "headers": headers})
            await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass

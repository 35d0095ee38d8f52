"""Hostile and unusual files, built in memory: bombs, formats outside the allowed list, odd modes,
multi-frame files, polyglots, malformed multipart bodies. Each builder returns bytes."""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
from PIL import Image

from tests.api.api_images import encode, gradient, jpeg, png

BOUNDARY = "reliability-boundary"


# ---- PNG from chunks, so that headers and chunks can say anything


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, *, bit_depth: int = 8, colour_type: int = 2, pixels: bytes | None = None,
            extra: bytes = b"") -> bytes:
    """A PNG with the given header; ``pixels`` are the filtered scanlines (default: all zero)."""  # fmt: skip
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    if pixels is None:
        row = b"\x00" + bytes(width * channels * bit_depth // 8)  # filter byte, then the samples
        pixels = row * height
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", zlib.compress(pixels, 9))
            + png_chunk(b"IEND", b""))  # fmt: skip


def png16(colour_type: int, width: int = 40, height: int = 30) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA) holding a ramp, alpha opaque."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    ramp = np.linspace(0, 65535, width, dtype=np.uint16)[None, :, None].repeat(height, 0).repeat(channels, 2)
    if colour_type in (4, 6):
        ramp[:, :, -1] = 65535
    rows = [b"\x00" + ramp[y].astype(">u2").tobytes() for y in range(height)]
    return raw_png(width, height, bit_depth=16, colour_type=colour_type, pixels=b"".join(rows))


def png_bomb_chunk(kind: bytes) -> bytes:
    """An 8x8 PNG carrying a compressed text (zTXt, iTXt) or ICC profile (iCCP) chunk that inflates to 50 MB."""
    bomb = zlib.compress(b"a" * 50_000_000, 9)  # 50 MB -> 50 kB
    body = {b"zTXt": b"k\x00\x00", b"iTXt": b"k\x00\x01\x00\x00\x00", b"iCCP": b"p\x00\x00"}[kind] + bomb
    return raw_png(8, 8, extra=png_chunk(kind, body))


def png_with_text(size: int) -> bytes:
    return raw_png(40, 30, extra=png_chunk(b"tEXt", b"Comment\x00" + b"a" * size))


def png_zero_bomb(width: int, height: int) -> bytes:
    """A real, fully decodable grey PNG of ``width`` x ``height`` zeros (~1000:1 compression: a
    10000 x 10000 file is 100 kB and 300 MB as RGB). Compressed row by row: the pixels never exist."""
    deflate, row = zlib.compressobj(9), bytes(width + 1)  # filter byte + one grey sample per pixel
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def palette_with_transparency() -> bytes:
    img = gradient(40, 30).convert("P")
    return encode(img, "PNG", transparency=0)


def jpeg_with_exif(*, orientation: int | None = None, raw: bytes | None = None) -> bytes:
    """A JPEG whose EXIF block holds ``orientation`` (any number), or is ``raw`` bytes."""
    if raw is None:
        exif = Image.Exif()
        exif[0x0112] = orientation  # the Orientation tag
        raw = exif.tobytes()
    return encode(gradient(40, 30), "JPEG", exif=raw)


# ---- headers that lie about the size


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(jpeg(16, 16))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming_screen(width: int, height: int) -> bytes:
    data = bytearray(encode(gradient(16, 16, "P"), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen descriptor
    return bytes(data)


def gif_claiming_frame(width: int, height: int) -> bytes:
    data = bytearray(encode(gradient(16, 16, "P"), "GIF"))
    descriptor = data.find(b"\x2c")  # image descriptor: x, y, width, height
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(gradient(16, 16), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


# ---- formats outside the allowed list


def fits() -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    2",
             "NAXIS1  =                   16", "NAXIS2  =                   16", "END"]  # fmt: skip
    header = b"".join(card.ljust(80).encode() for card in cards).ljust(2880, b" ")
    return header + bytes(256).ljust(2880, b"\x00")


def psd() -> bytes:
    """A minimal Photoshop file: 16x16 RGB, 8 bits, raw image data."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 16, 16, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layers: empty
    return header + sections + struct.pack(">H", 0) + bytes(16 * 16 * 3)


def saved_as(fmt: str, mode: str = "RGB") -> bytes:
    return encode(gradient(32, 24, mode), fmt)


def svg() -> bytes:
    return b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>'


# ---- multi-frame files: (file, its first frame as an HWC uint8 RGB array)


def _frames() -> tuple[Image.Image, Image.Image]:
    first = gradient(48, 40)
    first.paste((255, 255, 255), (8, 8, 24, 30))
    return first, Image.new("RGB", (48, 40), (255, 0, 0))


def animated(fmt: str) -> tuple[bytes, np.ndarray]:
    first, second = _frames()
    if fmt == "GIF":  # a palette image is stored losslessly
        first, second = first.quantize(64), second.quantize(64)
    params = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(first, fmt, save_all=True, append_images=[second], **params)
    if fmt == "MPO":  # lossy: the first frame is exactly what a lone JPEG of it decodes to
        reference = np.array(Image.open(io.BytesIO(encode(first, "JPEG"))).convert("RGB"))
    else:
        reference = np.array(first.convert("RGB"))
    return data, reference


# ---- polyglots


def jpeg_then_zip() -> bytes:
    """A JPEG with a ZIP archive appended (a valid file to both readers)."""
    return jpeg(40, 30) + b"PK\x03\x04" + bytes(26) + b"evil.html" + b"<script>alert(1)</script>"


def jpeg_with_html_comment() -> bytes:
    return encode(gradient(40, 30), "JPEG", comment=b"<script>alert(1)</script><?php system($_GET['c']); ?>")


def pdf_then_png() -> bytes:
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + png(16, 16)


def gif_javascript() -> bytes:
    """GIF89a/*...*/=alert(1): a GIF header that is also a JavaScript file."""
    return b"GIF89a/*\x00\x00\x00\x00*/=alert(1)//;"


# ---- multipart bodies written by hand


def part(name: str, body: bytes, *, filename: str | None = "image.jpg", extra_headers: bytes = b"") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode() + extra_headers + b"\r\n" + body
            + b"\r\n")  # fmt: skip


def multipart(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def random_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)

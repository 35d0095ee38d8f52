"""Draw a ``Predictor.to_json`` result on its image (Pillow ImageDraw) and encode it as PNG."""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils

from detector.data.coco_keypoints import COCO_KEYPOINT_NAMES, COCO_SKELETON

# A qualitative palette; a class keeps its colour from image to image.
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)  # fmt: skip
_MASK_ALPHA = 110  # of 255
_KEYPOINT_MIN_SCORE = 0.0  # keypoint scores are heatmap logits: > 0 is "more likely there than not"


def render_png(image: np.ndarray, result: dict, masks: Iterable[tuple[np.ndarray, int, int]] | None = None) -> bytes:
    """image: np.ndarray[H, W, 3] uint8 RGB; result: ``Predictor.to_json`` of its detections.

    ``masks``: per detection, its mask as an in-box window (np.ndarray[h, w] bool, y0, x0), as
    ``detector.mask_paste.mask_windows`` yields them; without it, the masks in ``result`` are drawn.
    Each mask is blended into its own box, so no image-sized layer is made per mask: the memory is the
    RGB canvas, the window of one mask and the PNG.
    """
    canvas = Image.fromarray(image)
    detections = result["detections"]
    if masks is not None:
        for det, (window, y0, x0) in zip(detections, masks):
            _tint(canvas, np.asarray(window, dtype=bool), y0, x0, _colour(det["label"]))
    else:
        for det in detections:
            if det.get("mask") is not None:
                _draw_mask(canvas, det["mask"], _colour(det["label"]))

    draw = ImageDraw.Draw(canvas)
    line = max(2, round(max(canvas.size) / 400))
    font = ImageFont.load_default(size=max(12, round(max(canvas.size) / 60)))
    for det in detections:
        colour = _colour(det["label"])
        x1, y1, x2, y2 = det["bbox"]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        if det.get("keypoints"):
            _draw_keypoints(draw, det["keypoints"], colour, line)
        _draw_label(draw, font, f"{det['category']} {det['score']:.2f}", (x1, y1), colour)

    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def _colour(label: int) -> tuple[int, int, int]:
    return _PALETTE[label % len(_PALETTE)]


def _tint(canvas: Image.Image, window: np.ndarray, y0: int, x0: int, colour: tuple[int, int, int]) -> None:
    """Blend ``colour`` at ``_MASK_ALPHA`` into the pixels of ``window`` (np.ndarray[h, w] bool) at (y0, x0),
    a band of rows at a time: a box as large as the image costs a band's worth of copies, not the image's."""
    h, w = window.shape
    rows = max(1, _BAND_PIXELS // max(w, 1))
    for top in range(0, h, rows):
        part = window[top : top + rows]  # (rows, w)
        if not part.any():
            continue
        box = (x0, y0 + top, x0 + w, y0 + top + part.shape[0])
        tinted = Image.blend(canvas.crop(box), Image.new("RGB", (w, part.shape[0]), colour), _MASK_ALPHA / 255)
        canvas.paste(tinted, box, Image.fromarray(part.view(np.uint8) * 255, mode="L"))


_BAND_PIXELS = 1 << 20  # pixels per band of ``_tint``


def _draw_mask(canvas: Image.Image, mask: dict, colour: tuple[int, int, int]) -> None:
    if "counts" in mask:  # COCO RLE: decoded whole (one mask at a time), drawn within its extent
        rle = {"size": mask["size"], "counts": mask["counts"].encode() if isinstance(mask["counts"], str) else mask["counts"]}
        binary = mask_utils.decode(rle).astype(bool)  # (H, W)
        rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
        if rows.size:
            y0, x0 = int(rows[0]), int(cols[0])
            _tint(canvas, binary[y0 : rows[-1] + 1, x0 : cols[-1] + 1], y0, x0, colour)
    else:  # polygons [[x1, y1, x2, y2, ...], ...]: filled on a stencil the size of their extent
        polygons = [p for p in mask["polygons"] if len(p) >= 6]
        if not polygons:
            return
        xs = [v for p in polygons for v in p[0::2]]
        ys = [v for p in polygons for v in p[1::2]]
        x0, y0 = max(int(min(xs)), 0), max(int(min(ys)), 0)
        x1, y1 = min(int(max(xs)) + 1, canvas.width), min(int(max(ys)) + 1, canvas.height)
        if x1 <= x0 or y1 <= y0:
            return
        stencil = Image.new("L", (x1 - x0, y1 - y0), 0)
        draw = ImageDraw.Draw(stencil)
        for p in polygons:
            draw.polygon([(p[i] - x0, p[i + 1] - y0) for i in range(0, len(p) - 1, 2)], fill=255)
        _tint(canvas, np.asarray(stencil) > 0, y0, x0, colour)


def _draw_keypoints(draw: ImageDraw.ImageDraw, keypoints: list, colour: tuple[int, int, int], line: int) -> None:
    visible = [(x, y) if score > _KEYPOINT_MIN_SCORE else None for x, y, score in keypoints]
    if len(keypoints) == len(COCO_KEYPOINT_NAMES):
        for a, b in COCO_SKELETON:
            if visible[a] is not None and visible[b] is not None:
                draw.line((visible[a], visible[b]), fill=colour, width=line)
    radius = line + 1
    for point in visible:
        if point is not None:
            x, y = point
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(255, 255, 255), outline=colour)


def _draw_label(draw: ImageDraw.ImageDraw, font, text: str, corner: tuple[float, float], colour) -> None:
    x, y = corner
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    height = bottom - top + 4
    y = y - height if y >= height else y  # above the box, unless that is off the image
    draw.rectangle((x, y, x + right - left + 4, y + height), fill=colour)
    draw.text((x + 2, y + 2 - top), text, fill=(0, 0, 0), font=font)

"""Draw a ``Predictor.to_json`` result on its image (Pillow ImageDraw) and encode it as PNG."""

from __future__ import annotations

import io

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


def render_png(image: np.ndarray, result: dict) -> bytes:
    """image: np.ndarray[H, W, 3] uint8 RGB; result: ``Predictor.to_json`` of its detections."""
    canvas = Image.fromarray(image).convert("RGBA")
    detections = result["detections"]
    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    for det in detections:
        if det.get("mask") is not None:
            _draw_mask(overlay, det["mask"], _colour(det["label"]))
    canvas = Image.alpha_composite(canvas, overlay)

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
    canvas.convert("RGB").save(out, format="PNG")
    return out.getvalue()


def _colour(label: int) -> tuple[int, int, int]:
    return _PALETTE[label % len(_PALETTE)]


def _draw_mask(overlay: Image.Image, mask: dict, colour: tuple[int, int, int]) -> None:
    fill = (*colour, _MASK_ALPHA)
    if "counts" in mask:  # COCO RLE
        rle = {"size": mask["size"], "counts": mask["counts"].encode() if isinstance(mask["counts"], str) else mask["counts"]}
        binary = mask_utils.decode(rle)  # (H, W) uint8, 0/1
        stencil = Image.fromarray(binary * 255, mode="L")
        overlay.paste(Image.new("RGBA", overlay.size, fill), (0, 0), stencil)
    else:  # polygons [[x1, y1, x2, y2, ...], ...]
        draw = ImageDraw.Draw(overlay)
        for polygon in mask["polygons"]:
            if len(polygon) >= 6:
                draw.polygon([(polygon[i], polygon[i + 1]) for i in range(0, len(polygon) - 1, 2)], fill=fill)


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

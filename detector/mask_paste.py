"""Pasting M x M box-relative mask probabilities into image pixels, and COCO RLE without full masks.

Pasting follows Mask R-CNN's reference (Detectron, torchvision): the mask is padded by one pixel, its box
grown to match and rounded to whole pixels, the mask resized bilinearly to the box and thresholded.
``masks_to_rle`` encodes each mask from its box alone, so a service never holds K full-image masks.
It sits below ``detector.modeling`` beside ``detector.structures``, whose ``Detections.masks()`` and
``rle_masks()`` call it: the model gives box-relative probabilities, pasting them is for its users.
Shape shorthand: K detections, M mask resolution, H x W the image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_util
from torch import Tensor


def _paste_windows(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float | None):
    """Yield, per detection, (mask Tensor[h, w] of the visible part of its box, y0, x0): binary, or
    probabilities where ``threshold`` is None."""
    im_h, im_w = image_size
    m = mask_probs.shape[-1]
    padded = F.pad(mask_probs, (1, 1, 1, 1))  # (K, M+2, M+2)
    scale = (m + 2) / m
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    grown = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1).to(torch.int64).tolist()
    for mask, (x1, y1, x2, y2) in zip(padded, grown):
        w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        x0, xe, y0, ye = max(x1, 0), min(x2 + 1, im_w), max(y1, 0), min(y2 + 1, im_h)
        if xe <= x0 or ye <= y0:
            yield mask.new_zeros((0, 0)), 0, 0
            continue
        resized = F.interpolate(mask[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        window = resized[y0 - y1 : ye - y1, x0 - x1 : xe - x1]
        yield (window if threshold is None else window > threshold), y0, x0


def mask_windows(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5):
    """Yield, per detection, (Tensor[h, w] bool, y0, x0): its thresholded mask over the visible part of its
    box, at (y0, x0) in the image ((0, 0)-sized when the box is off the image). The full mask is this window
    in an image of zeros, so callers that only need the window (polygons, drawing) never hold H x W."""
    yield from _paste_windows(mask_probs, boxes, image_size, threshold)


def paste_masks(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """mask_probs (K, M, M) in [0, 1], boxes (K, 4) xyxy in image pixels -> Tensor[K, H, W] bool."""
    out = torch.zeros((boxes.shape[0], *image_size), dtype=torch.bool, device=mask_probs.device)
    for k, (window, y0, x0) in enumerate(_paste_windows(mask_probs, boxes, image_size, threshold)):
        out[k, y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
    return out


def paste_mask_probs(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Full-image soft masks, Tensor[K, 1, H, W] float (torchvision's output format)."""
    out = mask_probs.new_zeros((boxes.shape[0], 1, *image_size))
    for k, (window, y0, x0) in enumerate(_paste_windows(mask_probs, boxes, image_size, threshold=None)):
        out[k, 0, y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
    return out


def masks_to_rle(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5) -> list[dict]:
    """COCO compressed RLE ({"size": [H, W], "counts": str}) of each thresholded mask."""
    im_h, im_w = image_size
    out = []
    for window, y0, x0 in _paste_windows(mask_probs, boxes, image_size, threshold):
        counts = _window_counts(window.cpu().numpy(), y0, x0, im_h, im_w)
        rle = mask_util.frPyObjects({"size": [im_h, im_w], "counts": counts}, im_h, im_w)
        out.append({"size": [im_h, im_w], "counts": rle["counts"].decode("ascii")})
    return out


def _window_counts(window: np.ndarray, y0: int, x0: int, im_h: int, im_w: int) -> list[int]:
    """Uncompressed COCO RLE counts (column-major runs, starting with zeros) of an image that is zero
    except for ``window`` at (y0, x0)."""
    h, w = window.shape
    if h == 0 or w == 0:
        return [im_h * im_w]
    columns = np.zeros((w, im_h), dtype=np.uint8)  # the window's columns, full height, one per row
    columns[:, y0 : y0 + h] = window.T
    flat = columns.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0]:  # RLE starts with a run of zeros, here the columns left of the window
        runs = [x0 * im_h] + runs
    else:
        runs[0] += x0 * im_h
    trailing = (im_w - x0 - w) * im_h
    if len(runs) % 2 == 1:  # ends with zeros: extend that run
        runs[-1] += trailing
    elif trailing:
        runs.append(trailing)
    return runs

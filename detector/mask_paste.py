"""Pasting M x M box-relative mask probabilities into image pixels, and COCO RLE without full masks.

Pasting follows Mask R-CNN's reference (Detectron, torchvision): the mask is padded by one pixel, its box
grown to match and rounded to whole pixels, the mask resized bilinearly to the box and thresholded.
``masks_to_rle`` encodes each mask from its box alone, so a service never holds K full-image masks.
``rule="detectron2"`` pastes as Detectron2's ``paste_masks_in_image`` does instead (its models were
evaluated so): each image pixel centre within a pixel of the box samples the M x M mask (bilinear,
``grid_sample``, the box not rounded, no padding), and the threshold keeps probabilities >= it, not > it.
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


PASTE_RULES = ("torchvision", "detectron2")


def _paste_windows(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float | None,
                   rule: str = "torchvision"):
    """Yield, per detection, (mask Tensor[h, w] of the visible part of its box, y0, x0): binary, or
    probabilities where ``threshold`` is None."""
    if rule == "detectron2":
        yield from _detectron2_windows(mask_probs, boxes, image_size, threshold)
        return
    if rule != "torchvision":
        raise ValueError(f"mask paste rule must be one of {PASTE_RULES}, got {rule!r}")
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


def _detectron2_windows(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float | None):
    """``_paste_windows`` as detectron2/layers/mask_ops.py pastes on the CPU (one mask at a time, over the
    box grown by a pixel and clipped to the image), in its arithmetic."""
    im_h, im_w = image_size
    for mask, box in zip(mask_probs, boxes):
        x0, y0, x1, y1 = box[:, None].unbind(0)  # each (1,)
        xs, ys = max(int(box[0].floor()) - 1, 0), max(int(box[1].floor()) - 1, 0)
        xe, ye = min(int(box[2].ceil()) + 1, im_w), min(int(box[3].ceil()) + 1, im_h)
        if xe <= xs or ye <= ys:
            yield mask.new_zeros((0, 0), dtype=torch.bool if threshold is not None else mask.dtype), 0, 0
            continue
        img_y = torch.arange(ys, ye, dtype=torch.float32, device=mask.device) + 0.5  # (h,) pixel centres
        img_x = torch.arange(xs, xe, dtype=torch.float32, device=mask.device) + 0.5
        img_y = (img_y - y0) / (y1 - y0) * 2 - 1  # in the box: -1 .. 1
        img_x = (img_x - x0) / (x1 - x0) * 2 - 1
        grid = torch.stack([img_x[None, :].expand(len(img_y), -1), img_y[:, None].expand(-1, len(img_x))], dim=2)
        window = F.grid_sample(mask[None, None].float(), grid[None].to(mask.dtype), align_corners=False)[0, 0]
        yield (window if threshold is None else window >= threshold), ys, xs


def mask_windows(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5,
                 rule: str = "torchvision"):
    """Yield, per detection, (Tensor[h, w] bool, y0, x0): its thresholded mask over the visible part of its
    box, at (y0, x0) in the image ((0, 0)-sized when the box is off the image). The full mask is this window
    in an image of zeros, so callers that only need the window (polygons, drawing) never hold H x W.
    ``rule``: one of PASTE_RULES (``Detections.mask_paste``)."""
    yield from _paste_windows(mask_probs, boxes, image_size, threshold, rule)


def paste_masks(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5,
                rule: str = "torchvision") -> Tensor:
    """mask_probs (K, M, M) in [0, 1], boxes (K, 4) xyxy in image pixels -> Tensor[K, H, W] bool."""
    out = torch.zeros((boxes.shape[0], *image_size), dtype=torch.bool, device=mask_probs.device)
    for k, (window, y0, x0) in enumerate(_paste_windows(mask_probs, boxes, image_size, threshold, rule)):
        out[k, y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
    return out


def paste_mask_probs(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], rule: str = "torchvision") -> Tensor:
    """Full-image soft masks, Tensor[K, 1, H, W] float (torchvision's output format)."""
    out = mask_probs.new_zeros((boxes.shape[0], 1, *image_size))
    for k, (window, y0, x0) in enumerate(_paste_windows(mask_probs, boxes, image_size, threshold=None, rule=rule)):
        out[k, 0, y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
    return out


def masks_to_rle(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5,
                 rule: str = "torchvision") -> list[dict]:
    """COCO compressed RLE ({"size": [H, W], "counts": str}) of each thresholded mask."""
    im_h, im_w = image_size
    out = []
    for window, y0, x0 in _paste_windows(mask_probs, boxes, image_size, threshold, rule):
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

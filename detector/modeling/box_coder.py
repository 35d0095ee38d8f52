"""Box <-> delta encoding of R-CNN (Girshick et al., 2014, appendix C):

    t_x = w_x (x - x_a) / w_a      t_y = w_y (y - y_a) / h_a
    t_w = w_w log(w / w_a)         t_h = w_h log(h / h_a)

with (x, y) box centres, (w, h) widths and heights, `_a` the anchor or proposal, and (w_x, w_y, w_w, w_h)
per-stage weights: (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head (Detectron's values).
Decoding clamps t_w, t_h at log(1000 / 16) so that exp() cannot overflow.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DEFAULT_CLAMP = math.log(1000.0 / 16)


def encode_boxes(gt_boxes: Tensor, anchors: Tensor, weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Deltas that take ``anchors`` (Tensor[R, 4], xyxy) to ``gt_boxes`` (Tensor[R, 4]): Tensor[R, 4]."""
    wx, wy, ww, wh = weights
    anchor_w = anchors[:, 2:3] - anchors[:, 0:1]
    anchor_h = anchors[:, 3:4] - anchors[:, 1:2]
    anchor_x = anchors[:, 0:1] + 0.5 * anchor_w
    anchor_y = anchors[:, 1:2] + 0.5 * anchor_h
    gt_w = gt_boxes[:, 2:3] - gt_boxes[:, 0:1]
    gt_h = gt_boxes[:, 3:4] - gt_boxes[:, 1:2]
    gt_x = gt_boxes[:, 0:1] + 0.5 * gt_w
    gt_y = gt_boxes[:, 1:2] + 0.5 * gt_h
    dx = wx * (gt_x - anchor_x) / anchor_w
    dy = wy * (gt_y - anchor_y) / anchor_h
    dw = ww * torch.log(gt_w / anchor_w)
    dh = wh * torch.log(gt_h / anchor_h)
    return torch.cat((dx, dy, dw, dh), dim=1)


def decode_boxes(
    deltas: Tensor,
    anchors: Tensor,
    weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0),
    clamp: float = DEFAULT_CLAMP,
) -> Tensor:
    """Apply ``deltas`` (Tensor[R, K*4], K boxes per anchor, e.g. one per class) to ``anchors``
    (Tensor[R, 4], xyxy): Tensor[R, K*4] xyxy."""
    anchors = anchors.to(deltas.dtype)
    wx, wy, ww, wh = weights
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    dx = deltas[:, 0::4] / wx  # (R, K)
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=clamp)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=clamp)
    pred_x = dx * widths[:, None] + ctr_x[:, None]
    pred_y = dy * heights[:, None] + ctr_y[:, None]
    half_w = 0.5 * (torch.exp(dw) * widths[:, None])
    half_h = 0.5 * (torch.exp(dh) * heights[:, None])
    boxes = torch.stack((pred_x - half_w, pred_y - half_h, pred_x + half_w, pred_y + half_h), dim=2)  # (R, K, 4)
    return boxes.flatten(1)

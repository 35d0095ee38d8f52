"""Matching anchors/proposals to ground truth by IoU, and sampling balanced training minibatches.

Shape shorthand: G ground-truth boxes, R anchors or proposals.
"""

from __future__ import annotations

import torch
from torch import Tensor

BELOW_LOW = -1  # background
BETWEEN = -2  # ignored in the loss


def match(iou: Tensor, high: float, low: float, allow_low_quality: bool) -> Tensor:
    """For each of R predictions, the index of its ground truth, BELOW_LOW or BETWEEN: Tensor[R] int64.

    iou (Tensor[G, R]). IoU >= high matches; < low is background; in between is ignored. With
    ``allow_low_quality`` each ground truth also keeps the predictions that overlap it best, even
    below ``high`` (Faster R-CNN's RPN rule, so that every object has an anchor).
    """
    if iou.numel() == 0:
        return torch.full((iou.shape[1],), BELOW_LOW, dtype=torch.int64, device=iou.device)
    best_iou, matches = iou.max(dim=0)  # (R,), (R,)
    best_matches = matches.clone()
    matches[best_iou < low] = BELOW_LOW
    matches[(best_iou >= low) & (best_iou < high)] = BETWEEN
    if allow_low_quality:
        best_per_gt = iou.max(dim=1).values  # (G,)
        _, pred_idx = torch.nonzero(iou == best_per_gt[:, None], as_tuple=True)
        matches[pred_idx] = best_matches[pred_idx]
    return matches


def sample_balanced(labels: Tensor, batch_size: int, positive_fraction: float) -> tuple[Tensor, Tensor]:
    """Random indices of at most ``batch_size`` entries of ``labels`` (1 positive, 0 negative, -1 ignore),
    at most ``positive_fraction`` of them positive: (positive indices, negative indices)."""
    positive = torch.nonzero(labels >= 1).squeeze(1)
    negative = torch.nonzero(labels == 0).squeeze(1)
    num_pos = min(int(batch_size * positive_fraction), positive.numel())
    num_neg = min(batch_size - num_pos, negative.numel())
    pos = positive[torch.randperm(positive.numel(), device=labels.device)[:num_pos]]
    neg = negative[torch.randperm(negative.numel(), device=labels.device)[:num_neg]]
    return pos, neg


def check_train_rois_per_image(value: int | None) -> None:
    """A head's training cap on RoIs per image (``train_rois_per_image``): at least 1, or None for all."""
    if value is not None and value < 1:
        raise ValueError(f"train_rois_per_image must be at least 1 or None, got {value}")

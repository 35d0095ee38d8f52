"""Memory-layout copies between NCHW and channels-last (NHWC) tensors, with public ops only.

torch's own 4D permuted copy (``x.contiguous(memory_format=...)``) is slow on the CPU; copying image by
image as a 2D (H*W, C) <-> (C, H*W) transpose gives the same tensor faster. On a tensor already in the
asked layout both are no-ops, so the exact path can call ``to_nchw`` at no cost.

Shape shorthand: N images, C channels, H x W the map size.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_nchw(x: Tensor) -> Tensor:
    """``x.contiguous()`` (N, C, H, W); from channels-last, image by image as a 2D transpose."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous()
    n, c, h, w = x.shape
    out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device)
    for i in range(n):
        out[i].view(c, h * w).copy_(x[i].permute(1, 2, 0).reshape(h * w, c).t())  # (H*W, C) -> (C, H*W)
    return out


def to_channels_last(x: Tensor) -> Tensor:
    """``x.contiguous(memory_format=torch.channels_last)``; from NCHW, image by image as a 2D transpose."""
    if x.is_contiguous(memory_format=torch.channels_last) or not x.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    for i in range(n):
        out[i].permute(1, 2, 0).view(h * w, c).copy_(x[i].view(c, h * w).t())  # (C, H*W) -> (H*W, C)
    return out

"""RoIAlign as a sparse matrix product, for training on the CPU.

RoIAlign is linear in the features: each output bin is a fixed weighted sum of feature pixels (bilinear
weights of its sampling points, averaged). Written as a sparse matrix A of shape (B*S*S, N*H*W), the
pooled features are ``A @ F`` with F the features as (N*H*W, C) rows, and their gradient is ``A.T @ G``.
torchvision's CPU kernel computes the same numbers, but its backward runs on one thread and recomputes
each sample's weights for every channel; the matrix is built once for all channels, and the sparse
products use torch's threads (``python bench/roi_align.py`` times both: bench/results/roi_align_cpu.json).

The weights follow torchvision's ``roi_align`` kernel (ops/cpu/roi_align_common.h) step by step: the
half-pixel offset of ``aligned``, the 1-pixel minimum RoI size when not aligned, ``sampling_ratio`` points
per bin side (0: ceil(RoI size / bins), per RoI), samples beyond one pixel outside the map dropping out,
and coordinates clamped to the map's edge. Boxes are constants (no gradient flows to them), as there.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

# torch warns once per process that CSR tensors are a beta feature; the products used here are tested against
# torchvision's kernel (tests/detector/modeling/test_sparse_roi_align.py). A filter, not catch_warnings, which is
# not thread-safe.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)


def sampling_matrix(rois: Tensor, feature_shape: tuple[int, int, int], output_size: tuple[int, int],
                    spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """The sparse (B*PH*PW, N*H*W) matrix, in compressed rows, of RoIAlign for ``rois`` (Tensor[B, 5]: batch
    index, x1, y1, x2, y2) on features of shape (N, H, W) per channel: row (b, i, j) holds the weights of bin
    (i, j) of RoI b over the feature pixels (n, y, x), flattened in that order."""
    n, h, w = feature_shape
    ph, pw = output_size
    dtype, device = rois.dtype, rois.device
    b = rois.shape[0]
    offset = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    roi_w, roi_h = rois[:, 3] * spatial_scale - offset - x1, rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # torchvision's legacy rule: RoIs at least one pixel
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if sampling_ratio > 0:
        grid_h = torch.full((b,), sampling_ratio, dtype=torch.int64, device=device)
        grid_w = grid_h
    else:
        # nan_to_num: a NaN box's grid would be whatever a NaN cast to an integer gives
        grid_h, grid_w = (torch.ceil(size).nan_to_num(0.0).to(torch.int64) for size in (bin_h, bin_w))
    count = (grid_h * grid_w).clamp(min=1).to(dtype)  # samples averaged per bin
    # every RoI padded to the largest grid (1 with no RoIs: an empty matrix, as torchvision pools none)
    gh, gw = (max(int(grid.max()), 1) if b else 1 for grid in (grid_h, grid_w))

    def sample_axis(start: Tensor, bin_size: Tensor, grid: Tensor, bins: int, points: int, size: int):
        """Along one axis: (B, bins, points) of the low and high pixel, their weights, and validity."""
        k = torch.arange(bins, dtype=dtype, device=device)[None, :, None]
        i = torch.arange(points, dtype=dtype, device=device)[None, None, :]
        g = grid.to(dtype)[:, None, None]
        t = start[:, None, None] + k * bin_size[:, None, None] + (i + 0.5) * bin_size[:, None, None] / g
        valid = (i < g) & (t >= -1.0) & (t <= size)  # padded points, and points beyond the map, add nothing
        t = t.clamp(min=0.0)
        low = t.to(torch.int64)  # t >= 0: truncation is floor
        edge = low >= size - 1
        low = low.clamp(max=size - 1)
        high = torch.where(edge, low, low + 1)
        frac = torch.where(edge, torch.zeros_like(t), t - low.to(dtype))
        return low, high, 1.0 - frac, frac, valid

    y_lo, y_hi, y_wlo, y_whi, y_ok = sample_axis(y1, bin_h, grid_h, ph, gh, h)  # (B, PH, GH)
    x_lo, x_hi, x_wlo, x_whi, x_ok = sample_axis(x1, bin_w, grid_w, pw, gw, w)  # (B, PW, GW)
    # Four corners per sample, laid out (B, PH, PW, GH, GW, 4): rows come out in order.
    ys = torch.stack([y_lo, y_lo, y_hi, y_hi], -1)[:, :, None, :, None, :]
    xs = torch.stack([x_lo, x_hi, x_lo, x_hi], -1)[:, None, :, None, :, :]
    wy = torch.stack([y_wlo, y_wlo, y_whi, y_whi], -1)[:, :, None, :, None, :]
    wx = torch.stack([x_wlo, x_whi, x_wlo, x_whi], -1)[:, None, :, None, :, :]
    ok = y_ok[:, :, None, :, None, None] & x_ok[:, None, :, None, :, None]
    # where, not a product: a NaN box's samples are not valid, and must not carry NaN weights in
    weights = torch.where(ok, wy * wx, 0.0) / count[:, None, None, None, None, None]
    image = rois[:, 0].to(torch.int64)[:, None, None, None, None, None]
    cols = ((image * h + ys) * w + xs).view(-1)  # the weights' layout, (B, PH, PW, GH, GW, 4), flattened
    weights = weights.view(-1)
    keep = weights != 0
    # Compressed rows straight from the layout: row (b, i, j) is the run of its GH*GW*4 corners, so a row's
    # start is a running count of the kept ones. A pixel read by several samples of a bin stays several
    # entries (products sum them); sorting and merging them (COO's coalesce) was half the matrix's cost.
    row_starts = torch.zeros(b * ph * pw + 1, dtype=torch.int64, device=device)
    row_starts[1:] = keep.view(b * ph * pw, gh * gw * 4).sum(1).cumsum(0)
    cols, weights = cols[keep], weights[keep]
    return torch.sparse_csr_tensor(row_starts, cols, weights, (b * ph * pw, n * h * w), check_invariants=False)


def roi_align(feature: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """torchvision.ops.roi_align's result and gradient for ``feature`` (N, C, H, W) and ``rois``
    (Tensor[B, 5]), as two sparse matrix products: (B, C, PH, PW). Float32 or float64 features."""
    n, c, h, w = feature.shape
    with torch.no_grad():
        matrix = sampling_matrix(rois.to(feature.dtype), (n, h, w), output_size, spatial_scale, sampling_ratio,
                                 aligned)
    rows = feature.permute(0, 2, 3, 1).reshape(n * h * w, c)  # (N*H*W, C)
    pooled = torch.sparse.mm(matrix, rows)  # (B*PH*PW, C); its gradient: matrix.T @ grad
    return pooled.view(rois.shape[0], *output_size, c).permute(0, 3, 1, 2)

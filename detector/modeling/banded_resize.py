"""Bilinear resize of a large image without a full-size float copy: the fast modes' input step.

torchvision's model transform (and the exact mode, ``transform.preprocess``) turns the whole image into
float, normalises it, then resizes it: for a 40 MP photo that is a 460 MiB float tensor per image, only
to keep about one row in five of it. ``resize_banded`` computes the same bilinear resize (no
antialiasing, ``align_corners=False``, torch's source-index rule for an output size) band by band of
output rows: each band gathers from the input (uint8 or float) only the two source rows each of its
output rows reads, converts those to float and combines them with the bilinear weights, first down the
rows, then across the columns. Its largest allocation is one band (``BAND_ELEMENTS`` floats), whatever
the input's size. Normalising after resizing rather than before gives the same numbers up to float
rounding: the two weights of each axis sum to 1, so the affine map per channel commutes with the resize
(tests/detector/modeling/test_banded_resize.py).

Shape shorthand: H x W the input, H' x W' the output (``transform.resized_size``), n rows in a band.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Floats per band of source rows (3 * n * W): 4 MiB, some tens of bands for 40 MP, each band's tensors
# smaller than the model's input they make (3 x 800 x 1066 floats at the COCO recipe's sizes: 10 MiB).
BAND_ELEMENTS = 1 << 20


def bilinear_taps(in_size: int, out_size: int, device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """For each output index d of one axis: the source indices (i0, i1) and the weight of i1, as torch's
    bilinear upsampling with ``align_corners=False`` and an output size computes them in float32:
    src = max(0, (d + 0.5) * scale - 0.5) with scale = in / out in float32, the product and difference
    rounded once (as its CPU kernel's fused multiply-add; rounding twice moves weights by up to 1e-4),
    i0 = floor(src), i1 = min(i0 + 1, in - 1), weight src - i0.
    Returns i0 (out,) int64, i1 (out,) int64, lambda1 (out,) float32; the weight of i0 is 1 - lambda1."""
    # float32(in) / out: the double quotient rounded to float32 is the same (53 >= 2 * 24 + 2 bits).
    scale = float(torch.tensor(in_size / out_size, dtype=torch.float32))
    src = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * scale - 0.5).float().clamp_(min=0)  # (out,)
    i0 = src.floor().long().clamp_(max=in_size - 1)
    i1 = (i0 + 1).clamp_(max=in_size - 1)
    lambda1 = (src - i0).clamp_(0, 1)
    return i0.to(device), i1.to(device), lambda1.to(device)


def resize_banded(image: Tensor, size: tuple[int, int], band_elements: int = BAND_ELEMENTS) -> Tensor:
    """``image`` (3, H, W), uint8 in [0, 255] or float in [0, 1] -> (3, H', W') float in [0, 1] (float32 for
    uint8, else the image's dtype), resized to ``size`` bilinearly as ``F.interpolate(image.float() / 255,
    size, mode="bilinear", align_corners=False)`` up to float rounding, holding at most one band of
    source rows in float at a time."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image of shape (3, H, W), got {tuple(image.shape)}")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise TypeError(f"expected a float or uint8 image, got {image.dtype}")
    dtype = image.dtype if image.is_floating_point() else torch.float32
    (_, height, width), (out_h, out_w) = image.shape, size
    row0, row1, row_w = bilinear_taps(height, out_h, image.device)  # (H',)
    col0, col1, col_w = bilinear_taps(width, out_w, image.device)  # (W',)
    row_w, col_w = row_w.to(dtype)[:, None], col_w.to(dtype)  # (H', 1), (W',)
    out = torch.empty((3, out_h, out_w), dtype=dtype, device=image.device)
    rows = max(1, band_elements // (3 * width))  # output rows per band
    for start in range(0, out_h, rows):
        band = slice(start, start + rows)
        # Indexing, not index_select: the decoder's image is a (3, H, W) view of HWC memory, which
        # index_select gathers element by element.
        top = image[:, row0[band]].to(dtype)  # (3, n, W): a copy even if dtype is the image's
        bottom = image[:, row1[band]].to(dtype)
        top.add_(bottom.sub_(top).mul_(row_w[band]))  # (3, n, W): top + (bottom - top) * lambda
        left = top[..., col0]  # (3, n, W')
        out[:, band] = left.add_(top[..., col1].sub_(left).mul_(col_w))
    return out.div_(255) if image.dtype == torch.uint8 else out

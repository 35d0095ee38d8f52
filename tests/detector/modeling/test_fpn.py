"""detector/modeling/fpn.py: the top-down pathway's sums."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detector.modeling.fpn import _add_upsampled


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("sizes", [((25, 38), (50, 76)), ((13, 19), (25, 38))])  # twice the size, and not
def test_top_down_sum_equals_upsample_then_add(memory_format, sizes):
    (h, w), (big_h, big_w) = sizes
    g = torch.Generator().manual_seed(0)
    lateral = torch.randn(2, 8, big_h, big_w, generator=g).contiguous(memory_format=memory_format)
    top_down = torch.randn(2, 8, h, w, generator=g).contiguous(memory_format=memory_format)
    expected = lateral + F.interpolate(top_down, size=(big_h, big_w), mode="nearest")
    assert torch.equal(_add_upsampled(lateral.clone(), top_down), expected)  # with autograd: a new tensor
    with torch.no_grad():
        inplace = lateral.clone(memory_format=memory_format)
        out = _add_upsampled(inplace, top_down)
    assert out is inplace and torch.equal(out, expected)  # bit for bit, in the lateral's memory

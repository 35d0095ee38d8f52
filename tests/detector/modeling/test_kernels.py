"""detector/modeling/kernels.py: each private torch op and its public fallback give the same numbers up
to float rounding, whether the op is missing from this torch or raises; outside float32 CPU inference
the public ops run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detector.modeling import kernels
from detector.modeling.layout import to_channels_last, to_nchw


def _missing():
    raise AttributeError("no such op in this torch")


def _raising():
    def op(*args):
        raise RuntimeError("changed signature")

    return op


def _conv_inputs(channels_last: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 20, 24, generator=g)
    other = torch.randn(2, 48, 10, 12, generator=g)
    weight, bias = torch.randn(48, 32, 3, 3, generator=g) * 0.1, torch.randn(48, generator=g)
    if channels_last:
        x, other, weight = to_channels_last(x), to_channels_last(other), weight.contiguous(memory_format=torch.channels_last)
    return x, other, weight, bias


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("broken", [_missing, _raising])
def test_conv_post_ops_fall_back_to_public_ops(monkeypatch, channels_last, broken):
    x, other, weight, bias = _conv_inputs(channels_last)
    geometry = ((2, 2), (1, 1), (1, 1), 1)  # stride, padding, dilation, groups
    expected_relu = F.relu(F.conv2d(x, weight, bias, *geometry))
    expected_add = F.relu(F.conv2d(x, weight, bias, *geometry) + other)
    with torch.inference_mode():
        if kernels.fused_conv_available():
            torch.testing.assert_close(kernels.conv2d_relu(x, weight, bias, *geometry), expected_relu)
            torch.testing.assert_close(kernels.conv2d_add_relu(x, other, weight, bias, *geometry), expected_add)
        monkeypatch.setitem(kernels.PRIVATE_OPS, "conv2d_relu", broken)
        monkeypatch.setitem(kernels.PRIVATE_OPS, "conv2d_add_relu", broken)
        with pytest.warns(RuntimeWarning, match="public ops"):
            relu = kernels.conv2d_relu(x, weight, bias, *geometry)
        with pytest.warns(RuntimeWarning, match="public ops"):
            add = kernels.conv2d_add_relu(x, other, weight, bias, *geometry)
    torch.testing.assert_close(relu, expected_relu)
    torch.testing.assert_close(add, expected_add)
    assert relu.min() == 0 and add.min() == 0 and relu.max() > 0  # the ReLU ran


@pytest.mark.parametrize("batch, size", [(1, 32), (2, 32), (50, 14)])  # one image, image by image, RoIs
@pytest.mark.parametrize("broken", [_missing, _raising])
def test_nnpack_conv_falls_back_to_public_ops(monkeypatch, batch, size, broken):
    g = torch.Generator().manual_seed(0)
    x = to_channels_last(torch.randn(batch, 16, size, size, generator=g))
    weight, bias = torch.randn(8, 16, 3, 3, generator=g) * 0.1, torch.randn(8, generator=g)
    expected = F.conv2d(x, weight, bias, 1, (1, 1))
    with torch.inference_mode():
        if kernels.nnpack_available():
            out = kernels.nnpack_conv2d(x, weight, bias, (1, 1))
            assert out.is_contiguous()  # NNPACK writes NCHW
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        monkeypatch.setitem(kernels.PRIVATE_OPS, "nnpack_conv2d", broken)
        with pytest.warns(RuntimeWarning, match="public ops"):
            out = kernels.nnpack_conv2d(x, weight, bias, (1, 1))
    torch.testing.assert_close(out, expected)


def test_private_ops_run_only_in_float32_cpu_inference_without_autocast(monkeypatch):
    x, other, weight, bias = _conv_inputs(False)
    monkeypatch.setitem(kernels.PRIVATE_OPS, "conv2d_relu", _raising)  # would warn if called
    with torch.no_grad():
        out = kernels.conv2d_relu(x.double(), weight.double(), bias.double(), (1, 1), (1, 1), (1, 1), 1)
    assert out.dtype == torch.float64
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernels.conv2d_relu(x, weight, bias, (1, 1), (1, 1), (1, 1), 1)
    assert out.dtype == torch.bfloat16  # autocast's own conv, not the private float32 one
    weight.requires_grad_(True)
    out = kernels.conv2d_relu(x, weight, bias, (1, 1), (1, 1), (1, 1), 1)  # with autograd
    out.sum().backward()
    assert weight.grad is not None


def test_probes_say_no_where_the_private_op_is_missing_or_raises(monkeypatch):
    for broken in (_missing, _raising):
        monkeypatch.setitem(kernels.PRIVATE_OPS, "nnpack_available", broken)
        monkeypatch.setitem(kernels.PRIVATE_OPS, "mkldnn_bf16_supported", broken)
        assert kernels.nnpack_available() is False
        assert kernels.bf16_is_fast(torch.device("cpu")) is False
    monkeypatch.setitem(kernels.PRIVATE_OPS, "conv2d_add_relu", _missing)
    assert kernels.fused_conv_available() is False


def test_layout_copies_keep_the_values():
    x = torch.randn(3, 5, 7, 9)
    nhwc = to_channels_last(x)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and torch.equal(nhwc, x)
    back = to_nchw(nhwc)
    assert back.is_contiguous() and torch.equal(back, x)
    assert to_nchw(x) is x  # already NCHW: no copy (the exact path calls it)


@pytest.mark.parametrize("device, current, expected", [
    ("cuda:1", 0, True),  # the chosen device is an A100-class one, whatever the current device
    ("cuda:0", 1, False),  # a V100: bf16 only emulated, though torch.cuda.is_bf16_supported() would say yes
    ("cuda", 1, True),  # no index: the current device
    ("cuda", 0, False),
])
def test_bf16_is_fast_on_cuda_asks_the_chosen_device_for_native_bf16(monkeypatch, device, current, expected):
    capability = {0: (7, 0), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability[index])

    def emulation_counts(including_emulation: bool = True) -> bool:
        raise AssertionError("is_bf16_supported counts emulation and reads the current device")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulation_counts)
    assert kernels.bf16_is_fast(torch.device(device)) is expected

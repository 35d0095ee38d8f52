"""The private torch kernels of the fast inference path, behind one adapter, each with a public fallback.

Private ops (names that start with ``_``) are not torch's API: a release may rename, remove or change
them. So nothing else in detector calls them. Each function here looks its op up when called and, where
this torch lacks it or it raises, computes the same thing with public ops (``F.conv2d``, ``F.relu``)
and says so with a RuntimeWarning (shown once per message by Python's default filter): a fallback is
slower, never different beyond float rounding (tests/detector/modeling/test_kernels.py forces it).
Private ops run only on float32 CPU tensors without autograd or autocast; anything else takes the
public ops.

- NNPACK's Winograd convolution (``torch._nnpack_spatial_convolution``, ``torch._nnpack_available``):
  3x3 stride-1 convolutions on the CPU, faster than oneDNN on wide convs over large maps only
  (``nnpack_pays``). It reads NCHW.
- oneDNN's convolution with post-ops (``torch.ops.mkldnn._convolution_pointwise`` and ``.binary``):
  the ReLU, or the residual add then the ReLU, run inside the convolution's own pass over its output.
- ``torch.ops.mkldnn._is_mkldnn_bf16_supported``: whether the CPU has bfloat16 arithmetic.

Shape shorthand: N images (or RoIs), C channels, H x W the map size.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from detector.modeling.layout import to_channels_last, to_nchw

# name -> how to look the private op up; AttributeError or RuntimeError where this torch has none.
PRIVATE_OPS: dict[str, Callable[[], Callable]] = {
    "nnpack_available": lambda: torch._nnpack_available,
    "nnpack_conv2d": lambda: torch._nnpack_spatial_convolution,
    "conv2d_relu": lambda: torch.ops.mkldnn._convolution_pointwise.default,
    "conv2d_add_relu": lambda: torch.ops.mkldnn._convolution_pointwise.binary,
    "mkldnn_bf16_supported": lambda: torch.ops.mkldnn._is_mkldnn_bf16_supported,
}


def private_op(name: str) -> Callable | None:
    """This torch's private op ``name`` (a key of ``PRIVATE_OPS``), or None where it has none."""
    try:
        return PRIVATE_OPS[name]()
    except (AttributeError, RuntimeError):
        return None


def _call(name: str, compute: Callable[[Callable], Tensor], fallback: Callable[[], Tensor]) -> Tensor:
    """``compute(op)`` with the private op ``name``; ``fallback()`` (public ops) where it is missing or raises."""
    op = private_op(name)
    if op is None:
        warnings.warn(f"this torch has no private op for {name}; public ops instead", RuntimeWarning, stacklevel=3)
        return fallback()
    try:
        return compute(op)
    except Exception as e:  # noqa: BLE001 - whatever a changed private op raises: compute it with public ops
        warnings.warn(f"torch's private op for {name} failed ({type(e).__name__}: {e}); public ops instead",
                      RuntimeWarning, stacklevel=3)
        return fallback()


def _private_runs_on(x: Tensor) -> bool:
    """Float32 CPU inference; under autocast the public ops, which autocast knows, run in its dtype."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))


def nnpack_available() -> bool:
    """Whether NNPACK runs here. The first call also initialises it: its convolution fails before."""
    op = private_op("nnpack_available")
    try:
        return op is not None and bool(op())
    except Exception:  # noqa: BLE001 - a changed private op: NNPACK off
        return False


def fused_conv_available() -> bool:
    """Whether oneDNN's convolution with post-ops (``conv2d_relu``, ``conv2d_add_relu``) is here."""
    return torch.backends.mkldnn.is_available() and None not in (private_op("conv2d_relu"), private_op("conv2d_add_relu"))


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 convolutions run natively on ``device`` rather than emulated."""
    if device.type == "cuda":
        # Native bf16 from compute capability 8.0 (Ampere) on, on ``device`` itself: not
        # ``torch.cuda.is_bf16_supported()``, which counts emulation as support and asks the current device.
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.is_available() and torch.cuda.get_device_capability(index) >= (8, 0)
    op = private_op("mkldnn_bf16_supported") if device.type == "cpu" else None
    try:
        return op is not None and bool(op())
    except Exception:  # noqa: BLE001 - a changed private op: assume emulated
        return False


def nnpack_pays(x: Tensor, in_channels: int, out_channels: int) -> bool:
    """Whether NNPACK beats oneDNN (channels-last) on ``x`` (N, C, H, W). NNPACK transforms the whole
    kernel at every call, so it wins only on wide convs over many pixels; the thresholds come from
    timing both on a 2-core AVX2 CPU (figures in bench/results/ and the README)."""
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    channels = min(in_channels, out_channels)
    return (channels >= 256 and pixels >= 3600) or (channels >= 128 and x.shape[0] == 1 and pixels >= 12000)


def nnpack_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
    """A 3x3 stride-1 convolution by NNPACK: (N, C, H, W) in either layout -> (N, C', H, W) NCHW.
    ``weight`` NCHW; call ``nnpack_available`` once first."""
    if not _private_runs_on(x):
        return F.conv2d(x, weight, bias, 1, padding)
    x = to_nchw(x)

    def nnpack(op: Callable) -> Tensor:
        if x.shape[0] == 1 or x.shape[2] * x.shape[3] <= 256:  # one image, or many RoIs: one call
            return op(x, weight, bias, padding, (1, 1))
        # NNPACK's batched path is slower than image by image on feature maps (bench/results/).
        return torch.cat([op(x[i : i + 1], weight, bias, padding, (1, 1)) for i in range(x.shape[0])])

    return _call("nnpack_conv2d", nnpack, lambda: F.conv2d(x, weight, bias, 1, padding))


def conv2d_relu(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int], groups: int) -> Tensor:
    """relu(conv2d(x)), the ReLU a post-op of oneDNN's convolution; ``x`` goes to ``weight``'s layout."""
    if not _private_runs_on(x):
        return F.relu_(F.conv2d(x, weight, bias, stride, padding, dilation, groups))
    x = _like(weight, x)
    return _call("conv2d_relu", lambda op: op(x, weight, bias, padding, stride, dilation, groups, "relu", [], ""),
                 lambda: F.relu_(F.conv2d(x, weight, bias, stride, padding, dilation, groups)))


def conv2d_add_relu(x: Tensor, other: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                    padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> Tensor:
    """relu(conv2d(x) + other), the add and the ReLU post-ops of oneDNN's convolution (the residual of
    a ResNet block); ``x`` and ``other`` go to ``weight``'s layout."""
    if not _private_runs_on(x):
        return F.relu_(F.conv2d(x, weight, bias, stride, padding, dilation, groups).add_(other))
    x, other = _like(weight, x), _like(weight, other)
    return _call(
        "conv2d_add_relu",
        lambda op: op(x, other, weight, bias, padding, stride, dilation, groups, "add", 1.0, "relu", [], ""),
        lambda: F.relu_(F.conv2d(x, weight, bias, stride, padding, dilation, groups).add_(other)),
    )


def _like(weight: Tensor, x: Tensor) -> Tensor:
    """``x`` in the memory layout of ``weight``, as oneDNN's fused convolutions want it."""
    return to_channels_last(x) if weight.is_contiguous(memory_format=torch.channels_last) else to_nchw(x)

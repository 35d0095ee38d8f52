"""The inference forms of the model's blocks: what ``RCNN.optimize_for_inference`` builds the fast copy
from. Each block that has a faster form builds it itself (``for_inference(options)`` on the backbone,
FPN, RPN, RoI heads and each head) out of the pieces here; what a form does not change it shares with
the original model (``shared_copy``), so the fast copy holds new tensors only for the folded convs and
for weights stored in another layout. Each speed-up is an explicit option (``InferenceOptions``):

- ``fuse_bn``: fold each FrozenBatchNorm2d, and each BatchNorm2d (torchvision's v2 models: in eval it
  is the same fixed map of its running statistics), into the convolution before it (the blocks name the
  pairs: ``ResNetBackbone.for_inference``, the FPN's and the heads' ``(conv, norm)`` modules). Such a BN
  is the affine map y = x * s + (b - m * s), s = w / sqrt(v + eps), so conv-then-BN equals one conv of
  weight W * s and bias c * s + b - m * s: exact in real arithmetic, rounded in another order in
  float32 (tolerances: tests/detector/modeling/test_fast_inference.py). Each residual block then runs
  its ReLUs and its residual add as oneDNN post-ops of its convolutions: fewer passes over the
  activations, the same numbers. GroupNorm layers are kept after their convs (a GN model gets the
  layouts and kernels, and its fast copy can still train).
- ``channels_last``: the backbone, FPN and RPN head run on NHWC tensors, which oneDNN's convolutions
  read without reordering, and so do the mask head's deconv and 1x1 predictor. The features go back
  to NCHW once before RoIAlign (``RCNN._predict_batch``), whose CPU kernel would otherwise copy them at
  every call. Exact up to float rounding.
- ``nnpack``: 3x3 stride-1 convolutions (most of Mask R-CNN's FLOPs: the bottlenecks' middle convs,
  FPN outputs, RPN head, mask and keypoint heads) run NNPACK's Winograd kernels on the CPU where that
  pays (``kernels.nnpack_pays``: wide convs over large maps; oneDNN runs the others). Winograd is exact
  in real arithmetic, with a larger float32 rounding error than oneDNN's. NNPACK reads NCHW: those
  convs keep NCHW weights and transpose their input (``layout.to_nchw``). The RPN head's two 1x1 convs
  become one matmul (``MatmulRPNHead``). Ignored on CUDA (cuDNN chooses its own algorithms) and where
  NNPACK is not built.
- ``bf16``: the convolutions and fully connected layers run under bfloat16 autocast; box decoding,
  NMS, scores, mask probabilities and keypoint decoding stay in float32 (``Bf16Autocast``). Not exact,
  and it pays only where the hardware has bf16 arithmetic (CUDA; CPUs with AVX512-BF16 or AMX,
  ``kernels.bf16_is_fast``): elsewhere oneDNN emulates it, far slower.
- ``banded_resize``: the input step (``transform.preprocess``) resizes each image before normalising it,
  band by band of output rows from the two source rows each reads (``banded_resize.resize_banded``),
  rather than normalising a full-size float copy and resizing that: the same bilinear resize, the
  normalisation commuting with it up to float rounding, and no image-sized float tensor. The
  Detectron2 presets' input step (Pillow on the uint8 image) has no float copy to avoid: unchanged.

The private torch ops these use are behind ``detector.modeling.kernels``, with public fallbacks. The
"exact" mode imports none of this: it is the model itself, bit-identical to torchvision. Measured
speeds: bench/engine.py, bench/results/ and the README. ``detector.modeling.speeds.SPEEDS`` names the
combinations ``Predictor(speed=...)`` offers.

Shape shorthand: N images (or RoIs), C channels, A anchors per location, Hl x Wl size of level l.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from detector.modeling import kernels
from detector.modeling.speeds import InferenceOptions


def shared_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` and its submodules that holds the very same parameter and buffer tensors:
    a block can change the copy's structure without touching ``module``, at no cost in weights."""
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo)


def foldable(norm: nn.Module | None) -> bool:
    """Whether ``norm`` is a fixed affine map at inference: a FrozenBatchNorm2d, or a BatchNorm2d with
    running statistics and affine weights (which eval mode uses; the fast copy is always in eval)."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats and norm.affine


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d | nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """The (weight, bias) of one conv equal to bn(conv(.)): new tensors, computed in float64 and rounded
    once to the conv's dtype; ``conv`` and ``bn`` are left as they are."""
    scale = bn.weight.double() * (bn.running_var.double() + bn.eps).rsqrt()  # (C_out,)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
    dtype = conv.weight.dtype
    return (conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype), (bias * scale + shift).to(dtype)


class InferenceConv2d(nn.Module):
    """A Conv2d at inference, then its norm (unless folded into its weights), the residual add and a
    ReLU, each optional, by the kernel chosen at build time (``detector.modeling.kernels``): "nnpack"
    (where ``nnpack_pays``, else F.conv2d), "post_ops" (oneDNN runs the ReLU / add+ReLU inside the conv)
    or "conv2d". With autograd, off the CPU or under autocast it computes as Conv2d, norm, add, ReLU."""

    KERNELS = ("nnpack", "post_ops", "conv2d")

    def __init__(self, conv: nn.Conv2d, weight: nn.Parameter, bias: nn.Parameter | None, *,
                 norm: nn.Module | None, relu: bool, kernel: str) -> None:
        """``conv`` gives the geometry (stride, padding ...); ``weight`` and ``bias`` may be its own
        (shared) or new ones (folded, or in another layout)."""
        super().__init__()
        if kernel not in self.KERNELS:
            raise ValueError(f"kernel must be one of {self.KERNELS}, got {kernel!r}")
        self.weight, self.bias, self.norm, self.relu, self.kernel = weight, bias, norm, relu, kernel
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """x (N, C, H, W) -> relu(norm(conv(x)) + residual) (N, C', H', W'), as configured."""
        conv_args = (self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.kernel == "post_ops" and self.relu:
            if residual is None:
                return kernels.conv2d_relu(x, *conv_args)
            return kernels.conv2d_add_relu(x, residual, *conv_args)
        if self.kernel == "nnpack" and kernels.nnpack_pays(x, self.in_channels, self.out_channels):
            y = kernels.nnpack_conv2d(x, self.weight, self.bias, self.padding)
        else:
            y = F.conv2d(x, *conv_args)
        if self.norm is not None:
            y = self.norm(y)
        if residual is not None:
            y = y + residual if torch.is_grad_enabled() else y.add_(residual)
        return F.relu_(y) if self.relu else y


def inference_conv(conv: nn.Conv2d, options: InferenceOptions, *, norm: nn.Module | None = None,
                   relu: bool = False, channels_last: bool | None = None) -> InferenceConv2d:
    """``conv``, then ``norm`` (None: none) and a ReLU, at inference under ``options``. A FrozenBatchNorm2d
    or BatchNorm2d ``norm`` (``foldable``) is folded into new weights when ``options.fuse_bn``; any other
    stays after the conv (a copy sharing its tensors). ``channels_last`` (default
    ``options.channels_last``): weights in NHWC, except for NNPACK's convs, which read NCHW. Weights left
    as they are stay shared with ``conv``."""
    fold = options.fuse_bn and foldable(norm)
    nnpack = options.nnpack and _nnpack_eligible(conv) and kernels.nnpack_available()
    kernel = "nnpack" if nnpack else "post_ops" if fold and kernels.fused_conv_available() else "conv2d"
    nhwc = (options.channels_last if channels_last is None else channels_last) and not nnpack
    weight, bias = fold_conv_bn(conv, norm) if fold else (conv.weight, conv.bias)
    weight = _in_layout(weight, torch.channels_last if nhwc else torch.contiguous_format)
    if bias is not None and not isinstance(bias, nn.Parameter):  # folded
        bias = nn.Parameter(bias, requires_grad=False)
    norm = None if fold or norm is None else shared_copy(norm)
    return InferenceConv2d(conv, weight, bias, norm=norm, relu=relu, kernel=kernel)


def inference_conv_block(module: nn.Module, options: InferenceOptions, *, relu: bool = False,
                         channels_last: bool | None = None) -> InferenceConv2d:
    """``inference_conv`` of a conv with its norm or without (``detector.modeling.norms.with_norm``: a
    Conv2d, or nn.Sequential(conv, norm))."""
    if isinstance(module, nn.Sequential):
        conv, norm = module
        return inference_conv(conv, options, norm=norm, relu=relu, channels_last=channels_last)
    return inference_conv(module, options, relu=relu, channels_last=channels_last)


def _in_layout(weight: Tensor, layout: torch.memory_format) -> nn.Parameter:
    """``weight`` itself where it is in ``layout`` already (shared), else a new Parameter in it."""
    if isinstance(weight, nn.Parameter) and weight.is_contiguous(memory_format=layout):
        return weight
    return nn.Parameter(weight.detach().contiguous(memory_format=layout), requires_grad=weight.requires_grad)


def _nnpack_eligible(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
        and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
    )


def channels_last_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (a 1x1 conv or a transposed conv) with its 4D weight in NHWC, its bias shared:
    oneDNN runs those faster so, even after reordering their input."""
    out = shared_copy(module)
    out.weight = _in_layout(module.weight, torch.channels_last)
    return out


class ResidualBlock(nn.Module):
    """A ResNet block at inference: x -> relu(conv_k(... relu(conv_1(x)) ...) + shortcut(x)), each conv
    with its ReLU (the last one's after the add) and its norm folded in or after it; torchvision's
    BasicBlock has k = 2, its Bottleneck k = 3 (``ResNetBackbone.for_inference`` builds it)."""

    def __init__(self, convs: list[InferenceConv2d], shortcut: InferenceConv2d | None) -> None:
        super().__init__()
        self.convs, self.shortcut = nn.ModuleList(convs), shortcut

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)  # (N, C', H', W')
        for conv in self.convs[:-1]:
            x = conv(x)
        return self.convs[-1](x, residual=identity)


class ResNetTrunk(nn.Module):
    """``ResNetBackbone`` at inference: stem conv (its norm and ReLU), max-pool, then the four stages of
    ResidualBlocks -> [C2, C3, C4, C5]."""

    def __init__(self, stem: InferenceConv2d, pool: nn.Module, stages: list[nn.Sequential]) -> None:
        super().__init__()
        self.stem, self.pool, self.stages = stem, pool, nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.pool(self.stem(x))  # (N, 64, H/4, W/4)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class MatmulRPNHead(nn.Module):
    """The RPN head with its two 1x1 convs (objectness, A channels; deltas, 4A) as one (5A, C) matmul over
    each NCHW level: the 3x3 conv's output is read once rather than twice, and a matmul reads it faster
    than oneDNN's 1x1 conv with so few outputs. Same maths (``RPNHead.for_inference`` builds it)."""

    def __init__(self, conv: nn.Module, objectness_logits: nn.Conv2d, anchor_deltas: nn.Conv2d) -> None:
        """``conv``: the head's 3x3 conv(s), each applying its own ReLU."""
        super().__init__()
        self.conv = conv
        self.num_anchors = objectness_logits.out_channels
        with torch.no_grad():
            weight = torch.cat([objectness_logits.weight, anchor_deltas.weight]).flatten(1)  # (5A, C)
            self.weight = nn.Parameter(weight, requires_grad=False)
            self.bias = nn.Parameter(torch.cat([objectness_logits.bias, anchor_deltas.bias]), requires_grad=False)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness (N, A, Hl, Wl) and deltas (N, A*4, Hl, Wl)."""
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)
            n, c, h, w = t.shape
            out = torch.matmul(self.weight, t.reshape(n, c, h * w)) + self.bias[:, None]  # (N, 5A, Hl*Wl)
            out = out.view(n, -1, h, w)
            logits.append(out[:, : self.num_anchors])
            deltas.append(out[:, self.num_anchors :])
        return logits, deltas


class Bf16Autocast(nn.Module):
    """Runs ``module`` under bfloat16 autocast and gives its tensor outputs back in float32, so that what
    follows it (box decoding, NMS, sigmoid, keypoint decoding) computes in float32."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args):
        device = next(self.module.parameters()).device
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = self.module(*args)
        return _to_float(out)


def with_bf16(module: nn.Module, options: InferenceOptions) -> nn.Module:
    """``module`` under bfloat16 autocast if ``options.bf16``, else ``module``."""
    return Bf16Autocast(module) if options.bf16 else module


def _to_float(out):
    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(o) for o in out)
    return out

"""Inference-only speed-ups of a trained model, each an explicit option (``InferenceOptions``):

- ``fuse_bn``: fold every FrozenBatchNorm2d into the convolution before it. FrozenBN is the affine map
  y = x * s + (b - m * s), s = w / sqrt(v + eps), so conv-then-BN equals one conv with weight W * s and
  bias c * s + b - m * s: exact in real arithmetic. In float32 the sums are rounded in another order:
  features move by ~4e-6 relative, boxes by 1e-4 px on small_r18_fpn and up to ~0.65 px on random-weight
  R50s, whose box regressions amplify it (tests/detector/modeling/test_fast_inference.py). Each
  bottleneck block then runs its ReLUs and residual add as oneDNN post-ops of its convs (FusedBottleneck:
  the same numbers, ~9% less backbone time). Trainable BatchNorm and GroupNorm layers are left alone
  (a GN/BN model gets only ``channels_last`` and ``nnpack``).
- ``channels_last``: the backbone, FPN and RPN head run on NHWC tensors, which oneDNN's convolutions
  read without reordering (1.4-2x faster convs on a 2-core AVX2 CPU), and so do the mask head's deconv
  and 1x1 predictor. The features go back to NCHW once before RoIAlign, whose CPU kernel would
  otherwise copy them back at every call. Exact up to float rounding, as ``fuse_bn``.
- ``nnpack``: 3x3 stride-1 convolutions (~70% of Mask R-CNN's FLOPs: the bottlenecks' middle convs,
  FPN outputs, RPN head, mask and keypoint heads) run NNPACK's Winograd kernels on the CPU where that
  pays (``nnpack_pays``: wide convs over large maps, 2-2.7x faster than oneDNN on AVX2; on small maps
  NNPACK is slower, and oneDNN runs them). Winograd is exact in real arithmetic too; in float32 its error is ~1e-5 relative
  (oneDNN's: ~3e-6). NNPACK reads NCHW: channels-last inputs are transposed for it (``to_nchw``, 2-10x
  faster than torch's own copy). The RPN head's two 1x1 convs become one matmul. Ignored on CUDA (cuDNN
  chooses its own algorithms) and where NNPACK is not built. NNPACK's thread pool is sized by
  torch.get_num_threads() at its first convolution in the process and keeps that size.
- ``bf16``: the convolutions and fully connected layers run under bfloat16 autocast; box decoding,
  NMS, scores, mask probabilities and keypoint decoding stay in float32. Not exact: on small_r18_fpn
  93-96% of detections stay (same label, IoU > 0.9), scores within 1.5e-3; on random-weight R50s
  almost none do (tests/detector/modeling/test_fast_inference.py). It pays only where the hardware has
  bf16 arithmetic (CUDA; CPUs with AVX512-BF16 or AMX): elsewhere oneDNN emulates it, ~10x slower.

The "exact" mode has none of these: it is the model itself, whose own inference path is bit-identical
to torchvision (in-place frozen BN, ReLUs and FPN sums, RoIAlign across threads, masks encoded from
their boxes). Every mode also runs with freed memory kept for the next pass (``detector.memory``,
applied by ``Predictor``). Measured with bench/engine.py (800x1216, 2 threads, 2-core AVX2 CPU, each
implementation in its own process, end to end with RLE; medians, bench/results/): maskrcnn_r50_fpn
batch 1: torchvision 6.09 s, exact 3.47 s (1.78x), fast 2.12 s (2.98x) (torchvision's model under our
malloc setting: 3.82 s); batch 2: 1.79x and 3.17x; batch 4: 2.52x and 4.45x. fasterrcnn_r50_fpn:
exact 1.38x, fast 2.12x; keypointrcnn_r50_fpn: exact 1.14x, fast 2.20x. small_r18_fpn: fast 1.06-1.11x
the exact mode, the same synthetic-val AP to 0.01 point.

``detector.modeling.speeds.SPEEDS`` names the combinations ``Predictor(speed=...)`` offers.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck
from torchvision.ops import FrozenBatchNorm2d

from detector.modeling.speeds import InferenceOptions


def apply_inference_options(model: nn.Module, options: InferenceOptions) -> bool:
    """Apply ``options`` in place to ``model`` (an RCNN, in eval mode: RCNN.optimize_for_inference passes
    a copy). Returns whether the model can still train: not once BN is folded or bf16 wrappers are in."""
    trainable = True
    heads = model.roi_heads
    if options.fuse_bn and fold_frozen_bn(model.backbone):
        fuse_bottlenecks(model.backbone)
        trainable = False
    if options.nnpack:
        use_nnpack(model)
        model.rpn.head = MatmulRPNHead(model.rpn.head)
    if options.channels_last:
        # With NNPACK the RPN head's 3x3 conv gives NCHW, which its matmul reads as it is.
        for module in (model.backbone, model.fpn) if options.nnpack else (model.backbone, model.fpn, model.rpn.head):
            module.to(memory_format=torch.channels_last)
        if heads.mask_head is not None:
            pointwise_channels_last(heads.mask_head)
        for m in model.modules():  # NNPACK reads NCHW weights: keep them so rather than copy them per call
            if isinstance(m, NNPACKConv2d):
                m.weight.data = m.weight.data.contiguous()
    if options.bf16:
        model.rpn.head = Bf16Autocast(model.rpn.head)
        for name in ("box_head", "mask_head", "keypoint_head"):
            if getattr(heads, name) is not None:
                setattr(heads, name, Bf16Autocast(getattr(heads, name)))
        trainable = False
    return trainable


def fold_frozen_bn(module: nn.Module) -> int:
    """Fold each FrozenBatchNorm2d that directly follows a Conv2d into that conv, in place, and replace
    the BN by an Identity. Pairs are found as torchvision's ResNets name them: ``convK`` + ``bnK`` in one
    module, or consecutive (Conv2d, FrozenBatchNorm2d) in an nn.Sequential (the downsample branch).
    Returns how many were folded; a FrozenBN without such a conv is left as it is."""
    folded = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, FrozenBatchNorm2d):
                continue
            conv = _conv_before(parent, name)
            if conv is None:
                continue
            fold_conv_bn(conv, child)
            setattr(parent, name, nn.Identity())
            folded += 1
    return folded


def _conv_before(parent: nn.Module, bn_name: str) -> nn.Conv2d | None:
    match = re.fullmatch(r"bn(\d+)", bn_name)
    if match:
        conv = getattr(parent, f"conv{match.group(1)}", None)
        return conv if isinstance(conv, nn.Conv2d) else None
    if isinstance(parent, nn.Sequential) and bn_name.isdigit() and int(bn_name) > 0:
        conv = parent[int(bn_name) - 1]
        return conv if isinstance(conv, nn.Conv2d) else None
    return None


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> None:
    """conv <- bn(conv(.)), in place; computed in float64 and rounded once to the conv's dtype."""
    scale = bn.weight.double() * (bn.running_var.double() + bn.eps).rsqrt()  # (C_out,)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
    dtype = conv.weight.dtype
    conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.empty_like(shift, dtype=dtype), requires_grad=False)
    conv.bias.copy_((bias * scale + shift).to(dtype))


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 convolutions run natively on ``device`` rather than emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast(device: torch.device, options: InferenceOptions):
    """The autocast context of ``options`` on ``device`` (disabled unless ``options.bf16``)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.bf16)


class NNPACKConv2d(nn.Conv2d):
    """A 3x3 stride-1 convolution computed by NNPACK's Winograd/FFT kernels at inference on the CPU where
    that pays (``nnpack_pays``; ~1e-5 relative error against oneDNN's 3e-6); anything else (grad, CUDA,
    another dtype, small maps) goes to nn.Conv2d."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled() or not nnpack_pays(x, self):
            return super().forward(x)
        x = to_nchw(x)
        if x.shape[0] == 1 or x.shape[2] * x.shape[3] <= 256:  # one image, or many RoIs: one call
            return torch._nnpack_spatial_convolution(x, self.weight, self.bias, self.padding, self.stride)
        # NNPACK's batched path is 2-3x slower than image by image on feature maps (measured 2x200x304).
        return torch.cat([torch._nnpack_spatial_convolution(x[i : i + 1], self.weight, self.bias, self.padding, self.stride)
                          for i in range(x.shape[0])])


def nnpack_pays(x: Tensor, conv: nn.Conv2d) -> bool:
    """Whether NNPACK beats oneDNN (channels-last) on this input. NNPACK transforms the whole kernel at
    every call, so it wins only on wide convs over many pixels. Measured on a 2-core AVX2 CPU, NNPACK /
    oneDNN time: 256 channels: 0.37 at 200x304, 0.42 at 100x152, 0.84 at 50x76, 1.4 at 32x44, 3.2 at
    16x22; 100 RoIs of 14x14: 0.45; 128 channels: 0.66 at 100x152, 1.1 at 64x88, 1.0 for 100 RoIs;
    512 channels: 1.1 at 25x38, 9 at 8x11; 64 channels: 1.0 at 200x304."""
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    channels = min(conv.in_channels, conv.out_channels)
    return (channels >= 256 and pixels >= 3600) or (channels >= 128 and x.shape[0] == 1 and pixels >= 12000)


def to_nchw(x: Tensor) -> Tensor:
    """``x.contiguous()`` (N, C, H, W). From channels-last it copies image by image as a 2D (H*W, C) ->
    (C, H*W) transpose, which torch runs 2-10x faster than the 4D permuted copy."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous()
    n, c, h, w = x.shape
    out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device)
    for i in range(n):
        out[i].view(c, h * w).copy_(x[i].permute(1, 2, 0).reshape(h * w, c).t())
    return out


def to_channels_last(x: Tensor) -> Tensor:
    """``x.contiguous(memory_format=torch.channels_last)``, from NCHW as a 2D transpose per image."""
    if x.is_contiguous(memory_format=torch.channels_last) or not x.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    for i in range(n):
        out[i].permute(1, 2, 0).view(h * w, c).copy_(x[i].view(c, h * w).t())
    return out


def use_nnpack(module: nn.Module) -> int:
    """Turn every eligible Conv2d below ``module`` (3x3, stride 1, no dilation, one group, zero padding)
    into an NNPACKConv2d sharing its parameters, in place; how many. None where NNPACK is missing."""
    if not torch._nnpack_available():  # also initialises NNPACK: without this first call it fails
        return 0
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d and _nnpack_eligible(child):
                child.__class__ = NNPACKConv2d
                count += 1
    return count


def _nnpack_eligible(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
        and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
    )


class FusedBottleneck(nn.Module):
    """torchvision's Bottleneck with its BNs folded, whose ReLUs and residual add run inside oneDNN's
    convolutions (post-ops) at inference on the CPU: three fewer passes over each block's activations.
    With grad, or off the CPU, it computes as the Bottleneck does."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3, self.downsample = block.conv1, block.conv2, block.conv3, block.downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
            out = F.relu(self.conv2(F.relu(self.conv1(x))))
            return F.relu(self.conv3(out) + identity)
        out = _conv_relu(self.conv2, _conv_relu(self.conv1, x))
        c = self.conv3
        return torch.ops.mkldnn._convolution_pointwise.binary(
            _like(c.weight, out), _like(c.weight, identity),
            c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups, "add", 1.0, "relu", [], ""
        )


def _like(weight: Tensor, x: Tensor) -> Tensor:
    """``x`` in the memory format of ``weight``, as oneDNN's fused convolutions want it."""
    return to_channels_last(x) if weight.is_contiguous(memory_format=torch.channels_last) else to_nchw(x)


def _conv_relu(conv: nn.Conv2d, x: Tensor) -> Tensor:
    if isinstance(conv, NNPACKConv2d):
        return F.relu_(conv(x))
    return torch.ops.mkldnn._convolution_pointwise(
        _like(conv.weight, x), conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups, "relu", [], ""
    )


def fuse_bottlenecks(module: nn.Module) -> int:
    """Replace, in place, each torchvision Bottleneck below ``module`` whose BNs are folded (Identity) by a
    FusedBottleneck; how many. None where oneDNN's fused convolution is missing."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return 0
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Bottleneck) and all(isinstance(getattr(child, f"bn{i}"), nn.Identity) for i in (1, 2, 3)):
                setattr(parent, name, FusedBottleneck(child))
                count += 1
    return count


def pointwise_channels_last(module: nn.Module) -> None:
    """Put the transposed and 1x1 convs below ``module`` (the mask head's deconv and predictor) in
    channels-last, in place: oneDNN runs them 2x faster so, even after reordering their input."""
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d) or (type(m) is nn.Conv2d and m.kernel_size == (1, 1)):
            m.to(memory_format=torch.channels_last)


class MatmulRPNHead(nn.Module):
    """The RPN head (detector.modeling.rpn.RPNHead) with its two 1x1 convs (objectness, A channels; deltas,
    4A) as one (5A, C) matmul over each NCHW level: the 3x3 conv's output is read once rather than twice,
    and a matmul reads it 2-4x faster than oneDNN's 1x1 conv with so few outputs. Same maths."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.conv = head.conv
        self.num_anchors = head.objectness_logits.out_channels
        weight = torch.cat([head.objectness_logits.weight, head.anchor_deltas.weight]).flatten(1)  # (5A, C)
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(torch.cat([head.objectness_logits.bias, head.anchor_deltas.bias]).detach().clone())

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness (N, A, Hl, Wl) and deltas (N, A*4, Hl, Wl)."""
        logits, deltas = [], []
        for x in features:
            t = F.relu_(self.conv(x))
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


def _to_float(out):
    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float(o) for o in out)
    return out

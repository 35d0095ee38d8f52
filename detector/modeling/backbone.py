"""ResNet / ResNeXt trunk that returns the C2..C5 feature maps.

The residual blocks are torchvision's (`torchvision.models.resnet*` constructors); what is ours is
the choice of normalisation, which stages train, and returning the four stage outputs.

Shape shorthand: N images, H x W the padded batch size.
C2: (N, 256, H/4, W/4), C3: (N, 512, H/8, W/8), C4: (N, 1024, H/16, W/16), C5: (N, 2048, H/32, W/32)
for the bottleneck ResNets; ResNet-18/34 give 64/128/256/512 channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d

from detector.modeling.speeds import InferenceOptions

# name -> torchvision constructor. ResNeXt-101 64x4d is as in torchvision (the Detectron2 X-101 64x4d).
ARCHITECTURES = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
    "resnet101": models.resnet101,
    "resnet152": models.resnet152,
    "resnext50_32x4d": models.resnext50_32x4d,
    "resnext101_32x8d": models.resnext101_32x8d,
    "resnext101_64x4d": models.resnext101_64x4d,
}
NORMS = ("frozen_bn", "bn", "gn")
STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")  # in the order they are unfrozen


@dataclass(frozen=True)
class BackboneConfig:
    arch: str = "resnet50"
    # "frozen_bn" fine-tunes ImageNet/COCO weights (torchvision v1, Detectron2 default); frozen BN with random
    # statistics does not normalise, so training from scratch needs "gn" (Wu & He, 2018) or "bn" (BatchNorm2d,
    # torchvision's v2 models; in eval a fixed map of its running statistics).
    norm: str = "frozen_bn"
    # torchvision's v1 COCO checkpoints were trained with eps = 0 (torchvision overwrites it on load).
    frozen_bn_eps: float = 1e-5
    gn_groups: int = 32
    # How many stages train, counted from the top (0..5); 3 = layer2..layer4 as in torchvision and Detectron2.
    trainable_stages: int = 3
    # Detectron2's MSRA trunks (R-50.pkl, R-101.pkl: RESNETS.STRIDE_IN_1X1) stride in each stage's first
    # 1x1 conv; torchvision's and FAIR's in the 3x3.
    stride_in_1x1: bool = False
    # A bottleneck trunk of other depth or widths than ``arch``'s, as Detectron2's RESNETS.* options make
    # them: blocks per stage (None: ``arch``'s own, and the fields below are unused), the stem's and res2's
    # output channels, ResNeXt groups and channels per group of res2's 3x3 convs (doubling per stage).
    # block "basic" builds ResNet-18/34's two-3x3 blocks instead (res2_out_channels wide, no groups): a
    # ResNet-18 of narrower widths, as the built-in small model uses.
    blocks: tuple[int, int, int, int] | None = None
    block: str = "bottleneck"
    stem_channels: int = 64
    res2_out_channels: int = 256
    groups: int = 1
    width_per_group: int = 64


class ResNetBackbone(nn.Module):
    """Returns [C2, C3, C4, C5]. Submodule names follow torchvision's ResNet (conv1, bn1, layer1..4)."""

    def __init__(self, cfg: BackboneConfig = BackboneConfig()) -> None:
        super().__init__()
        if cfg.arch not in ARCHITECTURES:
            raise ValueError(f"unknown backbone arch {cfg.arch!r}; choose one of {sorted(ARCHITECTURES)}")
        if cfg.norm not in NORMS:
            raise ValueError(f"unknown norm {cfg.norm!r}; choose one of {NORMS}")
        if not 0 <= cfg.trainable_stages <= 5:
            raise ValueError(f"trainable_stages must be in 0..5, got {cfg.trainable_stages}")
        trunk = ARCHITECTURES[cfg.arch](weights=None, norm_layer=_norm_layer(cfg)) if cfg.blocks is None else _custom_trunk(cfg)
        if cfg.stride_in_1x1:
            _stride_in_1x1(trunk)
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        self.out_channels = [self._stage_channels(getattr(self, f"layer{i}")) for i in range(1, 5)]
        self._freeze(cfg.trainable_stages)

    @staticmethod
    def _stage_channels(stage: nn.Sequential) -> int:
        last = stage[-1]
        return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels

    def _freeze(self, trainable_stages: int) -> None:
        trainable = list(STAGES[:trainable_stages])
        if trainable_stages == 5:
            trainable.append("bn1")
        for name, param in self.named_parameters():
            if not any(name.startswith(stage) for stage in trainable):
                param.requires_grad_(False)
        # The modules of the frozen stages (the stem's norm with its conv), kept in eval mode by ``train``.
        self._frozen = [name for name in (*STAGES, "bn1") if name not in trainable]

    def train(self, mode: bool = True) -> ResNetBackbone:
        """As ``nn.Module.train``, but a frozen stage stays in eval mode: its BatchNorm2d keeps the statistics
        it started with, as its parameters do (FrozenBatchNorm2d and GroupNorm have no mode)."""
        super().train(mode)
        for name in self._frozen:
            getattr(self, name).eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]

    def for_inference(self, options: InferenceOptions) -> nn.Module:
        """This trunk at inference under ``options`` (``detector.modeling.fast_inference``): the stem and
        each block rebuilt from their (conv, norm) pairs, FrozenBN and BN folded in where ``options.fuse_bn``;
        the tensors it does not change are shared with this trunk, which is left as it is."""
        from detector.modeling import fast_inference as fast  # not imported by the exact path

        stem = fast.inference_conv(self.conv1, options, norm=self.bn1, relu=True)
        stages = [nn.Sequential(*(_block_for_inference(b, options) for b in stage))
                  for stage in (self.layer1, self.layer2, self.layer3, self.layer4)]
        return fast.ResNetTrunk(stem, fast.shared_copy(self.maxpool), stages)


def _custom_trunk(cfg: BackboneConfig) -> nn.Module:
    """A torchvision-style ResNet of ``cfg.blocks`` and widths (conv1, bn1, relu, maxpool, layer1..4 of
    torchvision Bottlenecks or BasicBlocks). Stage i (0..3) outputs res2_out_channels * 2^i channels; a
    bottleneck stage's 3x3 convs have groups * width_per_group * 2^i channels, as Detectron2's ResNet builds
    them."""
    if cfg.block not in ("bottleneck", "basic"):
        raise ValueError(f"unknown block {cfg.block!r}; choose bottleneck or basic")
    norm_layer = _norm_layer(cfg)
    out2, width2 = cfg.res2_out_channels, cfg.groups * cfg.width_per_group
    if cfg.block == "basic":
        if cfg.groups != 1:
            raise ValueError(f"basic blocks have no groups (got groups={cfg.groups})")
        block, base_width = BasicBlock, 64  # torchvision's BasicBlock takes only the default width
    else:
        if out2 % Bottleneck.expansion or (width2 * Bottleneck.expansion * 64) % (out2 * cfg.groups):
            raise ValueError(f"res2_out_channels {out2} must be a multiple of {Bottleneck.expansion} that gives "
                             f"{cfg.groups} x {cfg.width_per_group} channels per 3x3 conv in whole numbers")
        block, base_width = Bottleneck, width2 * Bottleneck.expansion * 64 // (out2 * cfg.groups)
    trunk = nn.Module()
    trunk.conv1 = nn.Conv2d(3, cfg.stem_channels, 7, stride=2, padding=3, bias=False)
    trunk.bn1, trunk.relu = norm_layer(cfg.stem_channels), nn.ReLU(inplace=True)
    trunk.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    in_channels = cfg.stem_channels
    for i, count in enumerate(cfg.blocks):
        planes, stride = out2 // block.expansion * 2**i, 1 if i == 0 else 2
        blocks = []
        for b in range(count):
            downsample = None
            if b == 0 and (stride != 1 or in_channels != planes * block.expansion):
                downsample = nn.Sequential(nn.Conv2d(in_channels, planes * block.expansion, 1, stride=stride, bias=False),
                                           norm_layer(planes * block.expansion))
            blocks.append(block(in_channels, planes, stride if b == 0 else 1, downsample, cfg.groups, base_width,
                                norm_layer=norm_layer))
            in_channels = planes * block.expansion
        setattr(trunk, f"layer{i + 1}", nn.Sequential(*blocks))
    return trunk


def _stride_in_1x1(trunk: nn.Module) -> None:
    """Move the stride of each stage's first bottleneck from its 3x3 conv (torchvision) to its first 1x1
    conv (MSRA's trunks); the 3x3 keeps its padding, so the output sizes are the same."""
    for stage in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
        block = stage[0]
        if not isinstance(block, Bottleneck):
            raise ValueError("stride_in_1x1 needs a bottleneck trunk (ResNet-50 and deeper)")
        block.conv1.stride, block.conv2.stride = block.conv2.stride, block.conv1.stride


def _block_for_inference(block: nn.Module, options: InferenceOptions) -> nn.Module:
    """A torchvision BasicBlock or Bottleneck at inference: its (conv, norm) pairs in order, each conv
    with its ReLU (the last one's after the residual add), and its downsample (conv, norm) shortcut."""
    from detector.modeling import fast_inference as fast

    if not isinstance(block, (BasicBlock, Bottleneck)):
        raise TypeError(f"expected a torchvision BasicBlock or Bottleneck, got {type(block).__name__}")
    pairs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    if isinstance(block, Bottleneck):
        pairs.append((block.conv3, block.bn3))
    convs = [fast.inference_conv(conv, options, norm=norm, relu=True) for conv, norm in pairs]
    shortcut = None
    if block.downsample is not None:  # nn.Sequential(conv1x1, norm)
        conv, norm = block.downsample
        shortcut = fast.inference_conv(conv, options, norm=norm)
    return fast.ResidualBlock(convs, shortcut)


class InplaceFrozenBatchNorm2d(FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d (same parameters, buffers and arithmetic: x * scale + shift) that,
    without autograd, writes into its input rather than allocating two new tensors: bit for bit the same
    numbers, in less time (bench/results/). Only for inputs nothing else reads, as in the ResNets here,
    where every norm follows a convolution."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        shift = b - rm * scale
        return x.mul_(scale).add_(shift)


def _norm_layer(cfg: BackboneConfig):
    if cfg.norm == "frozen_bn":
        return partial(InplaceFrozenBatchNorm2d, eps=cfg.frozen_bn_eps)
    if cfg.norm == "gn":
        return lambda channels: nn.GroupNorm(cfg.gn_groups, channels)
    return nn.BatchNorm2d


def set_frozen_bn_eps(module: nn.Module, eps: float) -> None:
    """Set eps of every FrozenBatchNorm2d below ``module`` (0.0 for torchvision's v1 COCO checkpoints)."""
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = eps

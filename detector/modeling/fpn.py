"""Feature Pyramid Network (Lin et al., 2017): P2..P5 from C2..C5 by a top-down pathway with lateral
1x1 convolutions and 3x3 output convolutions, plus P6 by max-pooling P5 (kernel 1, stride 2).

Shape shorthand: N images, D = out_channels; Pi: (N, D, H/2^i, W/2^i).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.modeling.norms import check_conv_norm, with_norm
from detector.modeling.speeds import InferenceOptions


@dataclass(frozen=True)
class FPNConfig:
    out_channels: int = 256  # FPN paper, torchvision, Detectron2
    # A norm after each conv (detector.modeling.norms): None (torchvision v1), "bn" (torchvision v2) or "gn"
    # (GroupNorm, for training from scratch).
    norm: str | None = None
    gn_groups: int = 32


class FPN(nn.Module):
    """Returns [P2, P3, P4, P5, P6] with strides 4, 8, 16, 32, 64."""

    strides = (4, 8, 16, 32, 64)

    def __init__(self, in_channels: list[int], cfg: FPNConfig = FPNConfig()) -> None:
        super().__init__()
        check_conv_norm(cfg.norm, "FPNConfig.norm")
        d = cfg.out_channels
        self.lateral_convs = nn.ModuleList(_conv(c, d, 1, cfg) for c in in_channels)
        self.output_convs = nn.ModuleList(_conv(d, d, 3, cfg) for _ in in_channels)
        self.out_channels = d

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        top_down = self.lateral_convs[-1](features[-1])  # (N, D, H/32, W/32)
        outputs = [self.output_convs[-1](top_down)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral_convs[i](features[i])
            top_down = _add_upsampled(lateral, top_down)
            outputs.insert(0, self.output_convs[i](top_down))
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2, padding=0))  # P6
        return outputs

    def for_inference(self, options: InferenceOptions) -> FPN:
        """This FPN at inference under ``options`` (``detector.modeling.fast_inference``): its convs in the
        options' layouts and kernels, BatchNorms folded in, GroupNorms after them; sharing the tensors
        they do not change."""
        from detector.modeling import fast_inference as fast  # not imported by the exact path

        fpn = fast.shared_copy(self)
        fpn.lateral_convs = nn.ModuleList(fast.inference_conv_block(m, options) for m in self.lateral_convs)
        fpn.output_convs = nn.ModuleList(fast.inference_conv_block(m, options) for m in self.output_convs)
        return fpn


def _add_upsampled(lateral: Tensor, top_down: Tensor) -> Tensor:
    """lateral + top_down upsampled (nearest) to lateral's size. Without autograd, into the lateral's
    own memory, and at exactly twice the size (a padded batch's levels) by broadcasting each top-down
    pixel over its 2x2 block rather than materialising the upsampled map: the same sums either way."""
    if torch.is_grad_enabled():
        return lateral + F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
    n, c, h, w = top_down.shape
    if lateral.shape[-2:] == (2 * h, 2 * w):
        if lateral.is_contiguous() and top_down.is_contiguous():
            lateral.view(n, c, h, 2, w, 2).add_(top_down.view(n, c, h, 1, w, 1))  # (N, D, H, 2, W, 2)
            return lateral
        channels_last = torch.channels_last
        if lateral.is_contiguous(memory_format=channels_last) and top_down.is_contiguous(memory_format=channels_last):
            nhwc = lateral.permute(0, 2, 3, 1).view(n, h, 2, w, 2, c)  # (N, H, 2, W, 2, D)
            nhwc.add_(top_down.permute(0, 2, 3, 1).view(n, h, 1, w, 1, c))
            return lateral
    return lateral.add_(F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest"))


def _conv(in_channels: int, out_channels: int, kernel_size: int, cfg: FPNConfig) -> nn.Module:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=cfg.norm is None)
    nn.init.kaiming_uniform_(conv.weight, a=1)  # as in the FPN reference implementations
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)
    return with_norm(conv, cfg.norm, cfg.gn_groups)

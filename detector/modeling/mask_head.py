"""Mask head of Mask R-CNN (He et al., 2017): convs (each with its norm, if any, and a ReLU) over 14x14
RoIAlign features, a 2x deconv, and one 28x28 mask logit map per class; the loss is binary cross-entropy
on the ground-truth class's map. torchvision's v2 head has BatchNorm after its convs.

Shape shorthand: B RoIs, C+1 classes, M = 2 * pool_size mask resolution (28).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from detector.modeling.norms import check_conv_norm, conv_of, with_norm
from detector.modeling.sampling import check_train_rois_per_image
from detector.modeling.speeds import InferenceOptions


@dataclass(frozen=True)
class MaskHeadConfig:
    pool_size: int = 14  # masks are 2x this: 28 x 28
    sampling_ratio: int = 2
    num_convs: int = 4  # Mask R-CNN's FPN head: 4 x conv3x3-256
    conv_dim: int = 256
    # How the masks are pasted into the image (detector.mask_paste.PASTE_RULES): as torchvision, or as
    # Detectron2 (its checkpoints were evaluated so). Carried by each Detections (mask_paste). Training
    # samples the targets as the same library does (mask_targets: unaligned as torchvision, aligned as
    # Detectron2, whose paste puts them back in place).
    paste: str = "torchvision"
    norm: str | None = None  # after each conv (detector.modeling.norms); torchvision's v2 head: "bn"
    # Training only: at most this many foreground RoIs per image (a random subset of the sampled ones) go
    # through the head; None: all of them, as Mask R-CNN. The sampled positives cluster on few objects, so
    # a subset keeps every object's gradient at a fraction of the head's cost, its largest on a CPU.
    train_rois_per_image: int | None = None
    # The box size (square root of its area) pooled from FPN level P4 (MultiLevelRoIPooler): 224 as Mask R-CNN,
    # which pools boxes under 112 px from P2 and under 224 px from P3; 448 pools each box one level finer
    # (under 224 px from P2: thin parts stay a few feature pixels wide).
    canonical_size: float = 224.0

    def __post_init__(self) -> None:
        check_train_rois_per_image(self.train_rois_per_image)


class MaskHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, cfg: MaskHeadConfig = MaskHeadConfig()) -> None:
        super().__init__()
        check_conv_norm(cfg.norm, "MaskHeadConfig.norm")
        dims = [in_channels] + [cfg.conv_dim] * cfg.num_convs
        self.convs = nn.ModuleList(
            with_norm(nn.Conv2d(a, b, 3, padding=1, bias=cfg.norm is None), cfg.norm) for a, b in zip(dims[:-1], dims[1:])
        )
        self.deconv = nn.ConvTranspose2d(dims[-1], cfg.conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(cfg.conv_dim, num_classes, 1)
        for layer in [*map(conv_of, self.convs), self.deconv, self.predictor]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.constant_(layer.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, D, S, S) -> mask logits (B, C+1, 2S, 2S)."""
        for conv in self.convs:
            x = F.relu_(conv(x))  # in place: conv outputs are read by nothing else
        return self.predictor(F.relu_(self.deconv(x)))

    def for_inference(self, options: InferenceOptions) -> nn.Module:
        """This head at inference under ``options`` (``detector.modeling.fast_inference``): its 3x3 convs
        (BatchNorms folded in) by NNPACK where it pays, its deconv and 1x1 predictor in NHWC (oneDNN runs
        them faster so, even after reordering their input), under bf16 autocast if ``options.bf16``; the
        rest shared."""
        from detector.modeling import fast_inference as fast  # not imported by the exact path

        head = fast.shared_copy(self)
        head.convs = nn.ModuleList(fast.inference_conv_block(c, options, channels_last=False) for c in self.convs)
        if options.channels_last:
            head.deconv = fast.channels_last_copy(self.deconv)
            head.predictor = fast.channels_last_copy(self.predictor)
        return fast.with_bf16(head, options)


def mask_targets(gt_masks: Tensor, boxes: Tensor, matched_gt: Tensor, size: int, aligned: bool = False) -> Tensor:
    """Ground-truth masks (Tensor[G, H, W]) cropped to ``boxes`` (Tensor[B, 4]) of their matched object
    (``matched_gt``, Tensor[B]) and resampled to size x size: Tensor[B, size, size] in [0, 1].

    ``aligned=False`` samples as torchvision's Mask R-CNN (pixel i at coordinate i: the target sits half a
    pixel off the box); ``aligned=True`` samples pixel centres (i + 0.5), as Detectron2 rasterises polygons
    in the box, and pasting by Detectron2's rule puts such a target back in place. On the synthetic stick
    figures (limbs 4-12 px wide, 56 x 56 masks) the ground truth's IoU with itself after target and paste
    is 0.91 the torchvision way, 0.99 the Detectron2 way."""
    rois = torch.cat([matched_gt[:, None].to(boxes), boxes], dim=1)
    return roi_align(gt_masks[:, None].to(rois), rois, (size, size), spatial_scale=1.0, aligned=aligned)[:, 0]


def mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy of each RoI's ground-truth-class map. mask_logits (B, C+1, M, M),
    labels (B,), targets (B, M, M)."""
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    logits = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]  # (B, M, M)
    return F.binary_cross_entropy_with_logits(logits, targets)


def mask_inference(mask_logits: Tensor, labels: Tensor) -> Tensor:
    """Probabilities of each detection's own class: Tensor[B, M, M]."""
    index = torch.arange(labels.shape[0], device=labels.device)
    return mask_logits[index, labels].sigmoid()

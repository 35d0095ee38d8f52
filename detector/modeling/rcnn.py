"""The R-CNN family as one model: backbone -> FPN -> RPN -> RoI heads (box, optional mask and keypoint).

``forward(images, targets)`` returns the loss dict (training); ``predict(images)`` returns one
``Detections`` per image in that image's pixels (inference). ``build_model(cfg)`` composes it from a
``ModelConfig``; the named configurations are in ``detector.modeling.presets``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from detector.modeling.anchors import AnchorConfig
from detector.modeling.backbone import BackboneConfig, ResNetBackbone
from detector.modeling.box_head import BoxHeadConfig
from detector.modeling.fpn import FPN, FPNConfig
from detector.modeling.keypoint_head import KeypointHeadConfig
from detector.modeling.mask_head import MaskHeadConfig
from detector.modeling.roi_heads import RoIHeads
from detector.modeling.rpn import RPN, RPNConfig
from detector.modeling.transform import InputConfig, batch_images, normalize, rescale_detections, resize, to_float
from detector.structures import Detections, Targets


@dataclass(frozen=True)
class ModelConfig:
    class_names: tuple[str, ...]  # index == label; class_names[0] is the background
    backbone: BackboneConfig = BackboneConfig()
    fpn: FPNConfig = FPNConfig()
    anchors: AnchorConfig = AnchorConfig()
    rpn: RPNConfig = RPNConfig()
    box: BoxHeadConfig = BoxHeadConfig()
    mask: MaskHeadConfig | None = None
    keypoint: KeypointHeadConfig | None = None
    input: InputConfig = field(default_factory=InputConfig)
    keypoint_names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """Including the background."""
        return len(self.class_names)


class RCNN(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNetBackbone(cfg.backbone)
        self.fpn = FPN(self.backbone.out_channels, cfg.fpn)
        self.rpn = RPN(self.fpn.out_channels, cfg.anchors, cfg.rpn)
        self.roi_heads = RoIHeads(self.fpn.out_channels, cfg.num_classes, box=cfg.box, mask=cfg.mask, keypoint=cfg.keypoint)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def features(self, batch: Tensor) -> list[Tensor]:
        """(N, 3, Hp, Wp) normalised batch -> [P2, ..., P6]."""
        return self.fpn(self.backbone(batch))

    def forward(self, images: list[Tensor], targets: list[Targets]) -> dict[str, Tensor]:
        """Training losses. Images (3, H, W) arrive at their training size (the data pipeline resizes and
        flips); targets are in those images' pixels."""
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        images = [normalize(to_float(i), self.cfg.input) for i in images]
        batch = batch_images(images, self.cfg.input.size_divisible)
        sizes = [tuple(i.shape[-2:]) for i in images]
        features = self.features(batch)
        proposals, losses = self.rpn(features, sizes, tuple(batch.shape[-2:]), [t.boxes for t in targets])
        losses.update(self.roi_heads(features, proposals, targets))
        return losses

    @torch.inference_mode()
    def predict(self, images: list[Tensor]) -> list[Detections]:
        """Detections for each image (3, H, W), float in [0, 1] or uint8, in that image's pixels."""
        cfg = self.cfg.input
        original_sizes = [tuple(i.shape[-2:]) for i in images]
        images = [resize(normalize(to_float(i), cfg), cfg.min_size, cfg.max_size) for i in images]
        sizes = [tuple(i.shape[-2:]) for i in images]
        batch = batch_images(images, cfg.size_divisible)
        features = self.features(batch)
        proposals, _ = self.rpn(features, sizes, tuple(batch.shape[-2:]))
        detections = self.roi_heads.predict(features, proposals, sizes)
        return [rescale_detections(d, size) for d, size in zip(detections, original_sizes)]


def build_model(cfg: ModelConfig) -> RCNN:
    return RCNN(cfg)

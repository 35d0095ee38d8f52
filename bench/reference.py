"""torchvision's reference detection models with random (seeded) weights: what ours is compared with,
in the benchmarks (engine.py, train.py, parity.py) and the parity tests (tests/detector/modeling/).

Every BatchNorm, frozen (v1) or not (v2), gets trained-looking statistics and affine weights: an identity
BN (a fresh model's) would hide a wrong eps or a folding bug."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import (
    FasterRCNN,
    KeypointRCNN,
    MaskRCNN,
    fasterrcnn_resnet50_fpn_v2,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

REFERENCES = {"fasterrcnn_r50_fpn": FasterRCNN, "maskrcnn_r50_fpn": MaskRCNN, "keypointrcnn_r50_fpn": KeypointRCNN}
# torchvision's v2 builders (BatchNorm2d in trunk, FPN and heads); their BN eps is BatchNorm2d's own 1e-5.
V2_BUILDERS = {"fasterrcnn_r50_fpn_v2": fasterrcnn_resnet50_fpn_v2, "maskrcnn_r50_fpn_v2": maskrcnn_resnet50_fpn_v2}
PRESETS = (*REFERENCES, *V2_BUILDERS)  # the presets that have a torchvision twin


def torchvision_reference(preset: str, seed: int = 0, min_size: int = 320, max_size: int = 512, eps: float = 1e-5,
                          **options):
    """torchvision's model as its ``*_resnet50_fpn`` builders compose it when loading COCO weights
    (FrozenBatchNorm with ``eps``, 3 trainable stages), or as its ``*_resnet50_fpn_v2`` builder does
    (BatchNorm2d; ``eps`` is not used), with every weight and BN statistic random under ``seed``; in eval.
    ``options``: more of the model's keyword arguments (``rpn_post_nms_top_n_test=...``)."""
    torch.manual_seed(seed)
    if preset in V2_BUILDERS:
        model = V2_BUILDERS[preset](weights=None, weights_backbone=None, num_classes=91,
                                    min_size=min_size, max_size=max_size, **options)
        _randomise(model, seed)
        return model.eval()
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3)
    num_classes = 2 if preset == "keypointrcnn_r50_fpn" else 91
    model = REFERENCES[preset](backbone, num_classes=num_classes, min_size=min_size, max_size=max_size, **options)
    _randomise(model, seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = eps
    return model.eval()


def _randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                c = m.weight.shape[0]
                # Small variances make eps matter (the eps = 0 test needs that); weights of sqrt(var)
                # keep each layer's scale near 1 so that activations stay finite.
                var = 1e-5 + 1e-4 * torch.rand(c, generator=g)
                m.running_var.copy_(var)
                m.weight.copy_(var.sqrt() * (0.5 + torch.rand(c, generator=g)))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
        # Peaky class scores so that detections pass the 0.05 score threshold.
        heads = model.roi_heads
        heads.box_predictor.cls_score.weight.normal_(0, 0.01, generator=g)
        heads.box_predictor.bbox_pred.weight.normal_(0, 0.01, generator=g)
        model.rpn.head.cls_logits.weight.normal_(0, 0.05, generator=g)

"""Detectron2's model zoo configurations (configs/COCO-*/..._FPN_3x.yaml) as our ModelConfigs.

Each difference from torchvision's recipe is a config field with Detectron2's value (what the checkpoints
were trained and evaluated with; detectron2/config/defaults.py unless said):
- input: BGR, PIXEL_MEAN (103.530, 116.280, 123.675) and PIXEL_STD (1, 1, 1) in 0..255 units (FAIR's
  X-101 trunk: std (57.375, 57.120, 58.395)); the DefaultPredictor's ResizeShortestEdge (800, 1333) by
  Pillow on the uint8 image (``InputConfig.resize_rule``);
- trunk: MSRA's ResNets stride in the 1x1 conv (RESNETS.STRIDE_IN_1X1), FAIR's ResNeXt in the 3x3;
  FrozenBN eps 1e-5; stages res3..res5 train (BACKBONE.FREEZE_AT 2);
- anchors at the levels' nominal strides, not rounded (DefaultAnchorGenerator, OFFSET 0.0);
- RPN: NMS ranks by the logits; 1000 proposals per image after NMS in training (Base-RCNN-FPN.yaml; 1500
  for keypoints), L1 loss;
- RoIAlignV2 (aligned=True) with adaptive sampling (POOLER_SAMPLING_RATIO 0), levels by
  detectron2/modeling/poolers.py's rule; box L1 loss (SMOOTH_L1_BETA 0; 0.5 for keypoints);
- inference: no small-box filter before NMS, empty boxes dropped after it (detector_postprocess); masks
  pasted by mask_ops.paste_masks_in_image; keypoint scores by its spatial softmax.
The classes are COCO's 80 in category-id order (Detectron2's contiguous ids), background first; the
checkpoints' background-last classifier is reordered on load (detector/weights/detectron2_keys.py).
"""

from __future__ import annotations

from dataclasses import replace

from detector.data.coco_keypoints import COCO_KEYPOINT_NAMES
from detector.modeling.anchors import AnchorConfig
from detector.modeling.backbone import BackboneConfig
from detector.modeling.box_head import BoxHeadConfig
from detector.modeling.keypoint_head import KeypointHeadConfig
from detector.modeling.mask_head import MaskHeadConfig
from detector.modeling.rcnn import ModelConfig
from detector.modeling.rpn import RPNConfig
from detector.modeling.transform import InputConfig

MSRA_PIXEL_STD = (1.0, 1.0, 1.0)  # the MSRA trunks (R-50.pkl, R-101.pkl) take unscaled pixels
FAIR_PIXEL_STD = (57.375, 57.120, 58.395)  # FAIR's X-101-32x8d.pkl (its config's PIXEL_STD)

# (arch, stride_in_1x1, pixel_std) of the zoo's trunks.
TRUNKS = {
    "r50": ("resnet50", True, MSRA_PIXEL_STD),
    "r101": ("resnet101", True, MSRA_PIXEL_STD),
    "x101_32x8d": ("resnext101_32x8d", False, FAIR_PIXEL_STD),
}


def detectron2_config(class_names: tuple[str, ...], trunk: str, *, masks: bool = False,
                      keypoints: bool = False) -> ModelConfig:
    """Detectron2's Base-RCNN-FPN.yaml (+ Base-Keypoint-RCNN-FPN.yaml with ``keypoints``) on ``trunk``,
    a key of TRUNKS."""
    arch, stride_in_1x1, pixel_std = TRUNKS[trunk]
    cfg = ModelConfig(
        class_names=class_names,
        backbone=BackboneConfig(arch=arch, stride_in_1x1=stride_in_1x1),
        anchors=AnchorConfig(strides=(4, 8, 16, 32, 64), round_cell_anchors=False),
        rpn=RPNConfig(post_nms_top_n_train=1500 if keypoints else 1000, smooth_l1_beta=0.0, nms_on_logits=True),
        box=BoxHeadConfig(aligned=True, sampling_ratio=0, smooth_l1_beta=0.5 if keypoints else 0.0,
                          min_box_size=0.0, drop_empty_after_topk=True, pooler_levels="detectron2"),
        mask=MaskHeadConfig(sampling_ratio=0, paste="detectron2") if masks else None,
        keypoint=KeypointHeadConfig(sampling_ratio=0, score="softmax") if keypoints else None,
        input=InputConfig(pixel_mean=(103.530, 116.280, 123.675), pixel_std=pixel_std, channel_order="BGR",
                          pixel_range=255.0, resize_rule="detectron2"),
    )
    return replace(cfg, keypoint_names=COCO_KEYPOINT_NAMES) if keypoints else cfg

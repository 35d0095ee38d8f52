"""torchvision's detection state_dict keys -> ours.

torchvision renamed some modules over the years and still loads files with the old names; so do we:
  rpn.head.conv.weight            (old)   rpn.head.conv.0.0.weight             (new)
  backbone.fpn.inner_blocks.0.weight (old) backbone.fpn.inner_blocks.0.0.weight (new), same for layer_blocks
  roi_heads.mask_head.mask_fcn1.weight (old) roi_heads.mask_head.0.0.weight     (new)
"""

from __future__ import annotations

import re

from torch import Tensor

# (pattern on torchvision's key, our key). Tried in order; the first match wins.
_RULES = [
    (r"backbone\.body\.(.+)", r"backbone.\1"),
    (r"backbone\.fpn\.inner_blocks\.(\d+)\.(?:0\.)?(weight|bias)", r"fpn.lateral_convs.\1.\2"),
    (r"backbone\.fpn\.layer_blocks\.(\d+)\.(?:0\.)?(weight|bias)", r"fpn.output_convs.\1.\2"),
    (r"rpn\.head\.conv\.(?:0\.0\.)?(weight|bias)", r"rpn.head.conv.\1"),
    (r"rpn\.head\.cls_logits\.(weight|bias)", r"rpn.head.objectness_logits.\1"),
    (r"rpn\.head\.bbox_pred\.(weight|bias)", r"rpn.head.anchor_deltas.\1"),
    (r"roi_heads\.box_head\.fc6\.(weight|bias)", r"roi_heads.box_head.fc1.\1"),
    (r"roi_heads\.box_head\.fc7\.(weight|bias)", r"roi_heads.box_head.fc2.\1"),
    (r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)", r"roi_heads.box_head.\1.\2"),
    (r"roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)", r"roi_heads.mask_head.deconv.\1"),
    (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(weight|bias)", r"roi_heads.mask_head.predictor.\1"),
    (r"roi_heads\.keypoint_predictor\.kps_score_lowres\.(weight|bias)", r"roi_heads.keypoint_head.deconv.\1"),
]


def is_torchvision_state_dict(state_dict: dict[str, Tensor]) -> bool:
    return any(k.startswith("backbone.body.") for k in state_dict)


def convert_torchvision_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename torchvision's keys (either spelling) to ours. Keys no rule knows are kept as they are, so
    that loading reports them as unexpected."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue  # BatchNorm's step counter; FrozenBatchNorm has none
        out[_convert_key(key)] = value
    return out


def _convert_key(key: str) -> str:
    # Numbered heads: mask_head.{i}.0.w or mask_head.mask_fcn{i+1}.w; keypoint_head.{2i}.w or conv_fcn{i+1}.w
    m = re.fullmatch(r"roi_heads\.mask_head\.(?:(\d+)\.0|mask_fcn(\d+))\.(weight|bias)", key)
    if m:
        index = int(m[1]) if m[1] is not None else int(m[2]) - 1
        return f"roi_heads.mask_head.convs.{index}.{m[3]}"
    m = re.fullmatch(r"roi_heads\.keypoint_head\.(?:(\d+)|conv_fcn(\d+))\.(weight|bias)", key)
    if m:
        index = int(m[1]) // 2 if m[1] is not None else int(m[2]) - 1
        return f"roi_heads.keypoint_head.convs.{index}.{m[3]}"
    for pattern, replacement in _RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return key

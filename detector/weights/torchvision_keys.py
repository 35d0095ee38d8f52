"""torchvision's detection state_dict keys -> ours.

torchvision renamed some modules over the years and still loads files with the old names; so do we:
  rpn.head.conv.weight            (old)   rpn.head.conv.0.0.weight             (new)
  backbone.fpn.inner_blocks.0.weight (old) backbone.fpn.inner_blocks.0.0.weight (new), same for layer_blocks
  roi_heads.mask_head.mask_fcn1.weight (old) roi_heads.mask_head.0.0.weight     (new)

Its v2 models (``*_resnet50_fpn_v2``) put a BatchNorm after the FPN's and the heads' convs: a block
``X.i`` is then ``X.i.0`` (conv) and ``X.i.1`` (BN), which are ours ``Y.i.0`` and ``Y.i.1``
(``detector.modeling.norms``), where a block without a norm is ours ``Y.i`` alone. Which one a file has
is read from the file: a block with an ``X.i.1.weight`` key has a norm. Their RPN head has a second conv
(``rpn.head.conv.1.0``: ours ``rpn.head.extra_convs.0``), their box head is one nn.Sequential of convs,
a Flatten and linear layers (``roi_heads.box_head.5``: ours ``fc1``, the first linear layer).
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
# Blocks that are torchvision's Conv2dNormActivation (conv ".0", norm ".1" if any): theirs -> ours.
_CONV_BLOCKS = {
    "backbone.fpn.inner_blocks": "fpn.lateral_convs",
    "backbone.fpn.layer_blocks": "fpn.output_convs",
    "roi_heads.box_head": "roi_heads.box_head.convs",
    "roi_heads.mask_head": "roi_heads.mask_head.convs",
}
_NORMED = re.compile(r"(.+\.\d+)\.1\.weight")  # the norm of a Conv2dNormActivation block X.i


def is_torchvision_state_dict(state_dict: dict[str, Tensor]) -> bool:
    return any(k.startswith("backbone.body.") for k in state_dict)


def convert_torchvision_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename torchvision's keys (either spelling, v1 or v2 models) to ours. Keys no rule knows are kept
    as they are, so that loading reports them as unexpected. BatchNorm's step counters
    (``num_batches_tracked``) are kept for a v2 model (whose BatchNorm2d has them), dropped otherwise
    (FrozenBatchNorm has none)."""
    normed = {m[1] for k in state_dict if (m := _NORMED.fullmatch(k)) and m[1].rsplit(".", 1)[0] in _CONV_BLOCKS}
    box_linears = sorted({int(m[1]) for k in state_dict if (m := re.fullmatch(r"roi_heads\.box_head\.(\d+)\.weight", k))})
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked") and not normed:
            continue
        out[_convert_key(key, normed, box_linears)] = value
    return out


def _convert_key(key: str, normed: set[str], box_linears: list[int]) -> str:
    m = re.fullmatch(r"(.+)\.(\d+)\.([01])\.(.+)", key)  # a Conv2dNormActivation block's conv or norm
    if m and m[1] in _CONV_BLOCKS:
        ours = f"{_CONV_BLOCKS[m[1]]}.{m[2]}"
        return f"{ours}.{m[3]}.{m[4]}" if f"{m[1]}.{m[2]}" in normed else f"{ours}.{m[4]}"
    m = re.fullmatch(r"roi_heads\.box_head\.(\d+)\.(weight|bias)", key)  # v2: the linear layers after the convs
    if m:
        return f"roi_heads.box_head.fc{box_linears.index(int(m[1])) + 1}.{m[2]}"
    m = re.fullmatch(r"rpn\.head\.conv\.(\d+)\.0\.(weight|bias)", key)
    if m and int(m[1]) > 0:  # v2's second conv
        return f"rpn.head.extra_convs.{int(m[1]) - 1}.{m[2]}"
    # Numbered heads: mask_head.mask_fcn{i+1}.w (old); keypoint_head.{2i}.w or conv_fcn{i+1}.w
    m = re.fullmatch(r"roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)", key)
    if m:
        return f"roi_heads.mask_head.convs.{int(m[1]) - 1}.{m[2]}"
    m = re.fullmatch(r"roi_heads\.keypoint_head\.(?:(\d+)|conv_fcn(\d+))\.(weight|bias)", key)
    if m:
        index = int(m[1]) // 2 if m[1] is not None else int(m[2]) - 1
        return f"roi_heads.keypoint_head.convs.{index}.{m[3]}"
    for pattern, replacement in _RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return key

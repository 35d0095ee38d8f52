"""Detectron2's state_dict keys -> ours, and Caffe2's ImageNet trunk blob names -> our trunk's.

Detectron2 (detectron2/modeling/...) names a Mask / Keypoint R-CNN's tensors:
  backbone.bottom_up.stem.conv1.weight, .conv1.norm.*       backbone.conv1.weight, backbone.bn1.*
  backbone.bottom_up.res2.0.conv1.weight, .conv1.norm.*     backbone.layer1.0.conv1.weight, .bn1.*
  backbone.bottom_up.res2.0.shortcut.weight, .norm.*        backbone.layer1.0.downsample.0.weight, .1.*
  backbone.fpn_lateral2 .. 5, backbone.fpn_output2 .. 5     fpn.lateral_convs.0 .. 3, fpn.output_convs.0 .. 3
  proposal_generator.rpn_head.{conv, objectness_logits, anchor_deltas}   rpn.head.*
  roi_heads.box_head.fc1, fc2                               roi_heads.box_head.fc1, fc2
  roi_heads.box_predictor.cls_score, bbox_pred              roi_heads.box_head.cls_score, bbox_pred
  roi_heads.mask_head.mask_fcn1 .. 4, deconv, predictor     roi_heads.mask_head.convs.0 .. 3, deconv, predictor
  roi_heads.keypoint_head.conv_fcn1 .. 8, score_lowres      roi_heads.keypoint_head.convs.0 .. 7, deconv
Detectron2 puts the background class last in ``cls_score`` (K + 1 rows) and has no background row in
``bbox_pred`` (4K rows) or the mask ``predictor`` (K rows); ours have the background first everywhere, so
the classifier's last row moves to the front and a zero row (never read: the background is never
detected) is put before the others. Label k of ours is then Detectron2's class k - 1.

Caffe2's ImageNet trunks (detectron2/checkpoint/c2_model_loading.py reads them the same way):
  conv1_w, res_conv1_bn_{s,b}                  conv1.weight, bn1.{weight,bias}
  res2_0_branch2a_w, res2_0_branch2a_bn_s       layer1.0.conv1.weight, layer1.0.bn1.weight (2b: 2, 2c: 3)
  res2_0_branch1_w, res2_0_branch1_bn_b         layer1.0.downsample.0.weight, layer1.0.downsample.1.bias
with ``_bn_rm`` / ``_bn_riv`` the running mean and variance where the file has them; MSRA's files have
only the affine ``s`` and ``b``, and get mean 0 and variance 1 as Detectron2 gives them.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

D2_PREFIXES = ("backbone.bottom_up.", "proposal_generator.")
# Buffers some Detectron2 files carry that are not weights: the model's own input constants.
_NOT_WEIGHTS = ("pixel_mean", "pixel_std")
_NORM = {"weight": "weight", "bias": "bias", "running_mean": "running_mean", "running_var": "running_var"}

# (pattern on Detectron2's key, our key). Tried in order; the first match wins.
_RULES = [
    (r"backbone\.bottom_up\.stem\.conv1\.weight", r"backbone.conv1.weight"),
    (r"backbone\.bottom_up\.stem\.conv1\.norm\.(\w+)", r"backbone.bn1.\1"),
    (r"backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.weight", None),
    (r"backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.(\w+)", None),
    (r"backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.weight", None),
    (r"backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.(\w+)", None),
    (r"backbone\.fpn_lateral(\d)\.(weight|bias)", None),
    (r"backbone\.fpn_output(\d)\.(weight|bias)", None),
    (r"proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)\.(weight|bias)", r"rpn.head.\1.\2"),
    (r"roi_heads\.box_head\.(fc\d)\.(weight|bias)", r"roi_heads.box_head.\1.\2"),
    (r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)", r"roi_heads.box_head.\1.\2"),
    (r"roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)", None),
    (r"roi_heads\.mask_head\.(deconv|predictor)\.(weight|bias)", r"roi_heads.mask_head.\1.\2"),
    (r"roi_heads\.keypoint_head\.conv_fcn(\d+)\.(weight|bias)", None),
    (r"roi_heads\.keypoint_head\.score_lowres\.(weight|bias)", r"roi_heads.keypoint_head.deconv.\1"),
]


def is_detectron2_state_dict(state_dict: dict[str, Tensor]) -> bool:
    return any(k.startswith(D2_PREFIXES) for k in state_dict)


def convert_detectron2_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename Detectron2's keys to ours and put the background class first (see the module docstring).
    Keys no rule knows are kept as they are, so that loading reports them as unexpected."""
    out = {}
    for key, value in state_dict.items():
        if key in _NOT_WEIGHTS or key.endswith("num_batches_tracked"):
            continue
        out[_convert_key(key)] = value
    return _background_first(out)


def _convert_key(key: str) -> str:
    for pattern, replacement in _RULES:
        m = re.fullmatch(pattern, key)
        if m is None:
            continue
        if replacement is not None:
            return m.expand(replacement)
        return _numbered(key, m)
    return key


def _numbered(key: str, m: re.Match) -> str:
    """The keys whose numbers change: res2..5 -> layer1..4, conv k -> bn k, fpn levels 2..5 -> 0..3,
    mask_fcn / conv_fcn 1.. -> convs 0.."""
    g = m.groups()
    if ".shortcut." in key:
        prefix = f"backbone.layer{int(g[0]) - 1}.{g[1]}.downsample"
        return f"{prefix}.0.weight" if len(g) == 2 else f"{prefix}.1.{_NORM[g[2]]}"
    if ".bottom_up.res" in key:
        prefix = f"backbone.layer{int(g[0]) - 1}.{g[1]}"
        return f"{prefix}.conv{g[2]}.weight" if len(g) == 3 else f"{prefix}.bn{g[2]}.{_NORM[g[3]]}"
    if ".fpn_lateral" in key:
        return f"fpn.lateral_convs.{int(g[0]) - 2}.{g[1]}"
    if ".fpn_output" in key:
        return f"fpn.output_convs.{int(g[0]) - 2}.{g[1]}"
    head = "mask_head" if ".mask_fcn" in key else "keypoint_head"
    return f"roi_heads.{head}.convs.{int(g[0]) - 1}.{g[1]}"


def _background_first(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """cls_score: Detectron2's last (background) row first; bbox_pred and the mask predictor: a zero
    background row (4 for the boxes) first. Class-agnostic box or mask regression is not ours: refused."""
    cls_key = "roi_heads.box_head.cls_score."
    if cls_key + "weight" not in state:
        return state
    num_classes = state[cls_key + "weight"].shape[0] - 1  # K foreground classes
    for suffix in ("weight", "bias"):
        w = state.get(cls_key + suffix)
        if w is not None:
            state[cls_key + suffix] = torch.cat([w[-1:], w[:-1]])
    for key, rows in (("roi_heads.box_head.bbox_pred.", 4), ("roi_heads.mask_head.predictor.", 1)):
        for suffix in ("weight", "bias"):
            w = state.get(key + suffix)
            if w is None:
                continue
            if w.shape[0] != rows * num_classes:
                raise ValueError(f"{key}{suffix} has {w.shape[0]} rows for {num_classes} classes: a class-agnostic "
                                 f"Detectron2 head (CLS_AGNOSTIC_*_REG), which these models do not have")
            state[key + suffix] = torch.cat([w.new_zeros((rows, *w.shape[1:])), w])
    return state


# Caffe2 blob name (after "_" -> ".") -> our trunk name, for the ImageNet files.
_C2_NORM = {"s": "weight", "gamma": "weight", "b": "bias", "beta": "bias", "rm": "running_mean", "riv": "running_var",
            "running.mean": "running_mean", "running.var": "running_var"}
_C2_BRANCH = {"branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3"}
_C2_CLASSIFIER = ("fc1000_", "pred_", "linear_", "fc_")


def convert_c2_trunk_state_dict(blobs: dict[str, Tensor], source: str = "state_dict") -> dict[str, Tensor]:
    """Caffe2 ImageNet blobs (``res2_0_branch2a_w`` ...) -> our trunk's names (``layer1.0.conv1.weight``
    ..., ``detector.modeling.backbone.ResNetBackbone``), the classifier dropped, running mean 0 and
    variance 1 supplied where the file has only the affine parameters. ValueError naming ``source`` for
    a name that is not a ResNet trunk's."""
    out = {}
    for name, value in blobs.items():
        if name.startswith(_C2_CLASSIFIER):
            continue
        key = _c2_trunk_key(name)
        if key is None:
            raise ValueError(f"{source}: {name} is not a Caffe2 ResNet trunk blob")
        out[key] = value
    for key in [k for k in out if k.endswith(".weight") and not _is_conv(k)]:
        norm = key.removesuffix("weight")
        out.setdefault(norm + "running_mean", torch.zeros_like(out[key]))
        out.setdefault(norm + "running_var", torch.ones_like(out[key]))
    return out


def _is_conv(key: str) -> bool:
    return key == "conv1.weight" or bool(re.search(r"\.(conv\d|downsample\.0)\.weight$", key))


def _c2_trunk_key(name: str) -> str | None:
    if name == "conv1_w":
        return "conv1.weight"
    m = re.fullmatch(r"res_conv1_bn_(s|b|rm|riv|gamma|beta|running_mean|running_var)", name)
    if m:
        return f"bn1.{_C2_NORM[m[1].replace('_', '.')]}"
    m = re.fullmatch(r"res(\d)_(\d+)_(branch1|branch2a|branch2b|branch2c)_(w|bn_s|bn_b|bn_rm|bn_riv|bn_gamma|bn_beta)", name)
    if m is None:
        return None
    block = f"layer{int(m[1]) - 1}.{m[2]}"
    if m[3] == "branch1":
        return f"{block}.downsample.0.weight" if m[4] == "w" else f"{block}.downsample.1.{_C2_NORM[m[4][3:]]}"
    conv = _C2_BRANCH[m[3]]
    return f"{block}.{conv}.weight" if m[4] == "w" else f"{block}.bn{conv[-1]}.{_C2_NORM[m[4][3:]]}"


def detectron2_trunk_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A Detectron2 model's (or a Detectron2-named trunk's) ``backbone.bottom_up.*`` tensors in our
    trunk's names (no ``backbone.`` prefix), for a trunk taken from a detection checkpoint."""
    prefixed = {k if k.startswith("backbone.bottom_up.") else "backbone.bottom_up." + k: v for k, v in state.items()
                if k.startswith(("backbone.bottom_up.", "stem.", "res"))}
    return {k.removeprefix("backbone."): v for k, v in convert_detectron2_state_dict(prefixed).items()}

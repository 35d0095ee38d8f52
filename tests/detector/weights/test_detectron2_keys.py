"""Detectron2's names become ours; Caffe2's ImageNet trunks load into our ResNet trunk."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from detector.modeling.backbone import BackboneConfig, ResNetBackbone
from detector.weights.detectron2 import read_detectron2_trunk
from detector.weights.detectron2_keys import convert_c2_trunk_state_dict, convert_detectron2_state_dict
from detector.weights.loading import load_state_dict_strict


def test_names_and_background_row_move_to_ours():
    k, d = 3, 5  # 3 foreground classes
    cls_w = torch.arange((k + 1) * d, dtype=torch.float32).view(k + 1, d)  # row k: Detectron2's background
    state = {
        "backbone.bottom_up.stem.conv1.weight": torch.zeros(1),
        "backbone.bottom_up.stem.conv1.norm.running_var": torch.zeros(1),
        "backbone.bottom_up.res2.0.shortcut.weight": torch.zeros(1),
        "backbone.bottom_up.res2.0.shortcut.norm.bias": torch.zeros(1),
        "backbone.bottom_up.res5.2.conv3.norm.running_mean": torch.zeros(1),
        "backbone.bottom_up.res4.22.conv2.weight": torch.zeros(1),
        "backbone.fpn_lateral2.weight": torch.zeros(1), "backbone.fpn_output5.bias": torch.zeros(1),
        "proposal_generator.rpn_head.anchor_deltas.weight": torch.zeros(1),
        "roi_heads.box_head.fc2.bias": torch.zeros(1),
        "roi_heads.box_predictor.cls_score.weight": cls_w, "roi_heads.box_predictor.cls_score.bias": cls_w[:, 0],
        "roi_heads.box_predictor.bbox_pred.weight": torch.ones(4 * k, d),
        "roi_heads.mask_head.mask_fcn4.weight": torch.zeros(1), "roi_heads.mask_head.predictor.bias": torch.ones(k),
        "roi_heads.keypoint_head.conv_fcn8.bias": torch.zeros(1),
        "roi_heads.keypoint_head.score_lowres.weight": torch.zeros(1),
        "pixel_mean": torch.zeros(3), "something_else": torch.zeros(1),
    }
    out = convert_detectron2_state_dict(state)
    assert set(out) == {
        "backbone.conv1.weight", "backbone.bn1.running_var", "backbone.layer1.0.downsample.0.weight",
        "backbone.layer1.0.downsample.1.bias", "backbone.layer4.2.bn3.running_mean", "backbone.layer3.22.conv2.weight",
        "fpn.lateral_convs.0.weight", "fpn.output_convs.3.bias", "rpn.head.anchor_deltas.weight",
        "roi_heads.box_head.fc2.bias", "roi_heads.box_head.cls_score.weight", "roi_heads.box_head.cls_score.bias",
        "roi_heads.box_head.bbox_pred.weight", "roi_heads.mask_head.convs.3.weight", "roi_heads.mask_head.predictor.bias",
        "roi_heads.keypoint_head.convs.7.bias", "roi_heads.keypoint_head.deconv.weight",
        "something_else",  # unknown: kept, so that strict loading names it
    }
    assert torch.equal(out["roi_heads.box_head.cls_score.weight"], torch.cat([cls_w[k:], cls_w[:k]]))
    assert torch.equal(out["roi_heads.box_head.cls_score.bias"], torch.cat([cls_w[k:, 0], cls_w[:k, 0]]))
    bbox = out["roi_heads.box_head.bbox_pred.weight"]
    assert bbox.shape == (4 * (k + 1), d) and not bbox[:4].any() and bbox[4:].eq(1).all()
    assert out["roi_heads.mask_head.predictor.bias"].tolist() == [0.0, 1.0, 1.0, 1.0]


def test_class_agnostic_regression_is_refused():
    state = {"roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 8),
             "roi_heads.box_predictor.bbox_pred.weight": torch.zeros(4, 8)}
    with pytest.raises(ValueError, match="bbox_pred.weight has 4 rows for 80 classes"):
        convert_detectron2_state_dict(state)


def _c2_name(key: str) -> str:
    """Our trunk key -> its Caffe2 blob name, written out independently of the converter."""
    norm = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
    parts = key.split(".")
    if parts[0] == "conv1":
        return "conv1_w"
    if parts[0] == "bn1":
        return f"res_conv1_bn_{norm[parts[1]]}"
    stage, block = int(parts[0][-1]) + 1, parts[1]
    if parts[2] == "downsample":
        return f"res{stage}_{block}_branch1_" + ("w" if parts[3] == "0" else f"bn_{norm[parts[4]]}")
    branch = "branch2" + "abc"[int(parts[2][-1]) - 1]
    return f"res{stage}_{block}_{branch}_" + ("w" if parts[2].startswith("conv") else f"bn_{norm[parts[3]]}")


def test_msra_trunk_without_statistics_loads_into_our_trunk(tmp_path):
    torch.manual_seed(0)
    ours = ResNetBackbone(BackboneConfig(arch="resnet50"))
    blobs = {_c2_name(k): v.numpy() for k, v in ours.state_dict().items() if not k.endswith(("running_mean", "running_var"))}
    blobs.update({"fc1000_w": np.zeros((1000, 2048), np.float32), "fc1000_b": np.zeros(1000, np.float32)})
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps(blobs, protocol=2))
    state = read_detectron2_trunk(path)
    fresh = ResNetBackbone(BackboneConfig(arch="resnet50"))
    load_state_dict_strict(fresh, state, source=str(path))  # every key, none left over
    for k, v in ours.state_dict().items():
        expected = torch.zeros_like(v) if k.endswith("running_mean") else torch.ones_like(v) if k.endswith("running_var") else v
        assert torch.equal(fresh.state_dict()[k], expected), k


def test_fair_trunk_with_statistics_keeps_them():
    torch.manual_seed(0)
    ours = ResNetBackbone(BackboneConfig(arch="resnext101_32x8d"))
    with torch.no_grad():
        ours.layer4[2].bn3.running_var.uniform_(0.5, 2.0)
    blobs = {_c2_name(k): v for k, v in ours.state_dict().items()}
    state = convert_c2_trunk_state_dict(blobs)
    assert torch.equal(state["layer4.2.bn3.running_var"], ours.layer4[2].bn3.running_var)
    load_state_dict_strict(ResNetBackbone(BackboneConfig(arch="resnext101_32x8d")), state)


def test_a_file_that_is_no_trunk_is_refused(tmp_path):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"conv1_w": np.zeros(1, np.float32), "head_w": np.zeros(1, np.float32)}))
    with pytest.raises(ValueError, match="other.pkl: head_w is not a Caffe2 ResNet trunk blob"):
        read_detectron2_trunk(path)
    path.write_bytes(pickle.dumps({"model": {"roi_heads.box_head.fc1.weight": np.zeros(1, np.float32)}}))
    with pytest.raises(ValueError, match="other.pkl: holds no ResNet trunk"):
        read_detectron2_trunk(path)


def test_the_trunk_of_a_detectron2_checkpoint_loads_into_our_trunk():
    """``read_detectron2_trunk`` on a model_final .pkl: its backbone.bottom_up, nothing else."""
    from bench.detectron2_parity import FIXTURES, PRESETS, fixture_model

    case = "mask_rcnn_X_101_32x8d_FPN_3x"  # a grouped trunk, stride in the 3x3 (tests/fixtures/detectron2/)
    assert case in PRESETS
    model = fixture_model(case)
    trunk = ResNetBackbone(model.cfg.backbone)
    load_state_dict_strict(trunk, read_detectron2_trunk(FIXTURES / f"{case}.pkl"))
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(trunk.state_dict()[k], v), k


def test_an_msra_trunk_file_starts_a_d2_preset_and_is_refused_for_an_rgb_preset(tmp_path):
    """--backbone-weights R-50.pkl: read into a d2_* preset's trunk (BGR input); a torchvision preset (RGB) is
    told that the file was trained on BGR images."""
    from detector.modeling.presets import get_preset
    from detector.weights.imagenet import load_trunk

    torch.manual_seed(0)
    ours = ResNetBackbone(BackboneConfig(arch="resnet50"))
    with torch.no_grad():
        ours.layer3[1].bn2.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({_c2_name(k): v.numpy() for k, v in ours.state_dict().items()
                                   if not k.endswith("num_batches_tracked")}, protocol=2))
    cfg = get_preset("d2_maskrcnn_r50_fpn_3x")
    trunk = ResNetBackbone(cfg.backbone)
    load_trunk(trunk, path, cfg.backbone, preset="d2_maskrcnn_r50_fpn_3x", channel_order=cfg.input.channel_order)
    assert torch.equal(trunk.layer3[1].bn2.running_var, ours.layer3[1].bn2.running_var)
    assert torch.equal(trunk.layer4[2].conv3.weight, ours.layer4[2].conv3.weight)
    rgb = get_preset("maskrcnn_r50_fpn")
    with pytest.raises(ValueError, match="R-50.pkl: a Detectron2 ImageNet trunk, trained on BGR images"):
        load_trunk(ResNetBackbone(rgb.backbone), path, rgb.backbone, preset="maskrcnn_r50_fpn")

"""detector/modeling/detectron2_presets.py and the config fields it sets: each is Detectron2's rule
(the end-to-end check against Detectron2 itself: tests/detector/weights/test_detectron2_parity.py)."""

from __future__ import annotations

import math

import pytest
import torch

from detector.modeling.anchors import AnchorConfig, AnchorGenerator, detectron2_cell_anchors
from detector.modeling.backbone import BackboneConfig, ResNetBackbone
from detector.modeling.keypoint_head import heatmaps_to_keypoints
from detector.modeling.presets import COCO80_CLASSES, get_preset
from detector.modeling.transform import InputConfig, detectron2_resized_size, preprocess, resized_size


def test_resize_rounds_to_nearest_where_torchvision_truncates():
    assert detectron2_resized_size(480, 640, 800, 1333) == (800, 1067)  # 1066.67 rounds up
    assert resized_size(480, 640, 800, 1333) == (800, 1066)
    assert detectron2_resized_size(100, 1000, 800, 1333) == (133, 1333)  # the longer side capped


def test_detectron2_input_is_bgr_in_0_255_units_resized_by_pillow():
    cfg = InputConfig(min_size=4, max_size=100, pixel_mean=(10.0, 20.0, 30.0), pixel_std=(1.0, 2.0, 4.0),
                      channel_order="BGR", pixel_range=255.0, resize_rule="detectron2")
    image = torch.zeros(3, 4, 6, dtype=torch.uint8)
    image[0], image[1], image[2] = 200, 100, 50  # R, G, B
    x = preprocess(image, cfg)
    assert x.shape == (3, 4, 6)
    assert x[:, 0, 0].tolist() == [(50 - 10) / 1, (100 - 20) / 2, (200 - 30) / 4]  # B, G, R


def test_unrounded_cell_anchors_and_nominal_strides():
    base = detectron2_cell_anchors((32.0,), (0.5, 1.0, 2.0))
    w = math.sqrt(32.0**2 / 0.5)
    assert base[0].tolist() == pytest.approx([-w / 2, -0.5 * w / 2, w / 2, 0.5 * w / 2])
    generator = AnchorGenerator(AnchorConfig(sizes=((32,), (64,)), strides=(4, 64), round_cell_anchors=False))
    level0, level1 = generator((100, 100), [(25, 25), (2, 2)], "cpu")  # 100 // 2 = 50 would be the other rule
    assert torch.equal(level1[3] - level1[0], torch.tensor([64.0, 0.0, 64.0, 0.0]))
    assert torch.equal(level0[:3], base)


def test_stride_in_1x1_and_narrow_grouped_trunk():
    cfg = BackboneConfig(blocks=(1, 2, 1, 1), stem_channels=8, res2_out_channels=16, groups=4, width_per_group=2,
                         stride_in_1x1=True)
    trunk = ResNetBackbone(cfg)
    assert trunk.out_channels == [16, 32, 64, 128]
    assert trunk.layer2[0].conv1.stride == (2, 2) and trunk.layer2[0].conv2.stride == (1, 1)
    assert trunk.layer3[0].conv2.groups == 4 and trunk.layer3[0].conv2.out_channels == 4 * 2 * 4
    assert [len(s) for s in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4)] == [1, 2, 1, 1]
    outputs = trunk(torch.rand(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outputs] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]
    with pytest.raises(ValueError, match="res2_out_channels 18"):
        ResNetBackbone(BackboneConfig(blocks=(1, 1, 1, 1), res2_out_channels=18))


def test_softmax_keypoint_score_normalises_over_the_heatmap():
    heatmaps = torch.zeros(1, 1, 4, 4)
    heatmaps[0, 0, 1, 2] = math.log(5.0)  # exp(h - max): one 1 and fifteen 1/5, summing to 4
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    assert heatmaps_to_keypoints(heatmaps, boxes, "softmax")[0, 0, 2].item() == pytest.approx(1 / 4)
    assert heatmaps_to_keypoints(heatmaps, boxes)[0, 0, 2].item() == pytest.approx(math.log(5.0))


def test_presets_are_the_zoos():
    mask_x = get_preset("d2_maskrcnn_x101_32x8d_fpn_3x")
    assert mask_x.backbone.arch == "resnext101_32x8d" and not mask_x.backbone.stride_in_1x1
    assert mask_x.input.pixel_std == (57.375, 57.120, 58.395) and mask_x.mask.paste == "detectron2"
    faster = get_preset("d2_fasterrcnn_r50_fpn_3x")
    assert faster.backbone.stride_in_1x1 and faster.mask is None and faster.class_names == COCO80_CLASSES
    assert len(COCO80_CLASSES) == 81 and "N/A" not in COCO80_CLASSES
    keypoint = get_preset("d2_keypointrcnn_r101_fpn_3x")
    assert keypoint.class_names == ("__background__", "person") and keypoint.keypoint.score == "softmax"

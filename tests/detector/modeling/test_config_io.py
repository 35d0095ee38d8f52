"""detector/modeling/config_io.py: every preset's config survives JSON; what cannot be read is named."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from detector.modeling.config_io import config_from_dict, config_to_dict
from detector.modeling.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_survives_json(name):
    cfg = get_preset(name)
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(data) == cfg


def test_values_keep_their_types():
    cfg = get_preset("small_r18_fpn")
    data = json.loads(json.dumps(config_to_dict(cfg)))
    data["rpn"]["nms_thresh"] = 1  # an int where a float is wanted: JSON writes 1.0 as 1 in some writers
    back = config_from_dict(data)
    assert back.rpn.nms_thresh == 1.0 and isinstance(back.rpn.nms_thresh, float)
    assert isinstance(back.anchors.sizes, tuple) and isinstance(back.anchors.sizes[0], tuple)
    assert back.backbone.blocks == (2, 2, 2, 2) and back.mask.norm is None


def test_a_missing_field_takes_its_default():
    cfg = get_preset("small_r18_fpn")
    data = config_to_dict(cfg)
    del data["mask"]["train_rois_per_image"]  # a file written before the field existed
    assert config_from_dict(data) == replace(cfg, mask=replace(cfg.mask, train_rois_per_image=None))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["mask"].update(conv_dim="64"), r"config.mask.conv_dim: expected int, got '64'"),
    (lambda d: d["mask"].update(conv_dim=True), r"config.mask.conv_dim: expected int, got True"),
    (lambda d: d["box"].update(box_weights=[10.0, 10.0, 5.0]), r"config.box.box_weights: expected 4 values, got 3"),
    (lambda d: d["anchors"].update(sizes=[[32.0], ["x"]]), r"config.anchors.sizes\[1\]\[0\]: expected float"),
    (lambda d: d.update(rpn=[1, 2]), r"config.rpn: expected an object for RPNConfig"),
    (lambda d: d["fpn"].update(depth=3), r"config.fpn: FPNConfig has no field 'depth'"),
    (lambda d: d.pop("class_names"), r"config: .*class_names"),
    (lambda d: d.update(keypoint_classes=["unicorn"]), r"keypoint_classes .*unicorn"),
])
def test_what_cannot_be_read_is_named(change, message):
    data = config_to_dict(get_preset("small_r18_fpn"))
    change(data)
    with pytest.raises(ValueError, match=message):
        config_from_dict(data)

"""detector/weights/model_metadata.py: a weights file that names its model rebuilds it (architecture,
classes, keypoints, input sizes), through ``model_config_for`` and ``Predictor.from_preset``; a preset that
disagrees is named beside the file's; files that name nothing leave the preset to decide."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from detector.modeling import presets
from detector.modeling.config_io import config_from_dict
from detector.modeling.preset_names import DEFAULT_PRESET
from detector.modeling.presets import get_preset
from detector.modeling.rcnn import build_model
from detector.predictor import Predictor
from detector.weights import save_weights
from detector.weights.model_metadata import (FORMAT_VERSION, MODEL_KEY, config_from_entry, model_config_for,
                                             model_metadata)

PRESET = "small_r18_fpn"  # the smallest preset with boxes, masks and keypoints
CLASSES = ("__background__", "apple", "pear", "person")


def _own_cfg():
    cfg = get_preset(PRESET)
    return replace(cfg, class_names=CLASSES, keypoint_classes=("person",),
                   input=replace(cfg.input, min_size=160, max_size=224))


@pytest.fixture(scope="module")
def own_weights(tmp_path_factory):
    """Random weights of small_r18_fpn with 3 other classes and other input sizes, saved as training does."""
    path = tmp_path_factory.mktemp("own") / "model_final.safetensors"
    torch.manual_seed(0)
    save_weights(build_model(_own_cfg()), path, metadata={MODEL_KEY: model_metadata(PRESET, _own_cfg())})
    return path


def test_the_entry_is_small_versioned_json(own_weights):
    entry = model_metadata(PRESET, _own_cfg())
    config = entry.pop("config")
    assert entry == {"format": FORMAT_VERSION, "preset": PRESET, "class_names": list(CLASSES),
                     "keypoint_names": list(get_preset(PRESET).keypoint_names), "keypoint_classes": ["person"],
                     "min_size": 160, "max_size": 224}
    assert config_from_dict(json.loads(json.dumps(config))) == _own_cfg()
    assert "keypoint_names" not in model_metadata("fasterrcnn_r50_fpn", get_preset("fasterrcnn_r50_fpn"))
    assert len(json.dumps(entry)) + len(json.dumps(config)) < 5000


def test_the_file_keeps_its_architecture_when_the_preset_changes(own_weights, monkeypatch):
    """A retrained preset (other widths) must not break the files trained with the one before."""
    before = _own_cfg()
    wider = get_preset(PRESET)
    wider = replace(wider, mask=replace(wider.mask, conv_dim=2 * wider.mask.conv_dim),
                    fpn=replace(wider.fpn, out_channels=2 * wider.fpn.out_channels))
    monkeypatch.setitem(presets.PRESETS, PRESET, lambda: wider)
    assert get_preset(PRESET) == wider
    assert model_config_for(None, own_weights) == (PRESET, before)
    predictor = Predictor.from_preset(None, own_weights)
    assert predictor.model.cfg == before
    (det,) = predictor.predict([np.zeros((64, 80, 3), np.uint8)])
    assert det.boxes.shape[1] == 4


def test_an_entry_without_config_takes_the_presets_architecture(own_weights, monkeypatch):
    entry = model_metadata(PRESET, _own_cfg())
    del entry["config"]  # what detector.train wrote before the entry carried the config
    changed = replace(get_preset(PRESET), fpn=replace(get_preset(PRESET).fpn, out_channels=64))
    monkeypatch.setitem(presets.PRESETS, PRESET, lambda: changed)
    assert config_from_entry(entry) == replace(changed, class_names=CLASSES, keypoint_classes=("person",),
                                               input=replace(changed.input, min_size=160, max_size=224))


def test_a_config_this_version_cannot_read_is_named():
    entry = model_metadata(PRESET, _own_cfg())
    entry["config"]["mask"]["upsampling"] = "pixel_shuffle"  # a field of a newer detector
    with pytest.raises(ValueError, match=r"my.safetensors: config.mask: MaskHeadConfig has no field 'upsampling'"):
        config_from_entry(entry, source="my.safetensors")


@pytest.mark.parametrize("preset", [None, PRESET])
def test_the_file_gives_classes_keypoints_and_sizes(own_weights, preset):
    name, cfg = model_config_for(preset, own_weights)
    assert (name, cfg) == (PRESET, _own_cfg())


def test_a_preset_that_disagrees_is_named_beside_the_files(own_weights):
    with pytest.raises(ValueError, match=rf"{own_weights}.*holds a {PRESET} model.*not the maskrcnn_r50_fpn"):
        model_config_for("maskrcnn_r50_fpn", own_weights)


def test_files_that_name_no_model_take_the_preset(tmp_path):
    torch_file = tmp_path / "state.pth"
    torch.save({"w": torch.zeros(1)}, torch_file)  # a torchvision-like file: no metadata at all
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, plain)
    for path in (torch_file, plain, None):
        assert model_config_for("maskrcnn_r50_fpn", path) == ("maskrcnn_r50_fpn", get_preset("maskrcnn_r50_fpn"))
        assert model_config_for(None, path) == (DEFAULT_PRESET, get_preset(DEFAULT_PRESET))


def test_files_of_the_older_layout_are_read(tmp_path):
    path = tmp_path / "old.safetensors"  # what detector.train wrote before the "model" entry
    save_file({"w": torch.zeros(1)}, path, metadata={"preset": json.dumps(PRESET),
                                                      "class_names": json.dumps(["__background__", "a", "b"])})
    name, cfg = model_config_for(None, path)
    assert name == PRESET and cfg.class_names == ("__background__", "a", "b")
    assert cfg.keypoint_classes == ()  # the preset's "person" is not among its classes


@pytest.mark.parametrize("entry, message", [
    ({"format": FORMAT_VERSION + 1, "preset": PRESET, "class_names": list(CLASSES)}, "newer than this detector"),
    ({"format": 1, "preset": "nope", "class_names": list(CLASSES)}, "unknown model preset 'nope'"),
    ({"format": 1, "preset": PRESET, "class_names": ["__background__"]}, "at least one class"),
    ({"format": 1, "preset": PRESET, "class_names": list(CLASSES), "keypoint_classes": ["cat"]}, r"\['cat'\]"),
    ({"format": 1, "preset": PRESET, "class_names": list(CLASSES), "min_size": 0}, "min_size must be a positive"),
    ({"format": 1, "class_names": list(CLASSES)}, "lacks 'preset'"),
])
def test_entries_that_cannot_be_read_name_the_file(tmp_path, entry, message):
    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(1)}, path, metadata={MODEL_KEY: json.dumps(entry)})
    with pytest.raises(ValueError, match=message) as info:
        model_config_for(None, path)
    assert str(path) in str(info.value)


def test_the_predictor_serves_the_files_classes(own_weights):
    predictor = Predictor.from_preset(None, own_weights, speed="exact")
    assert predictor.name == PRESET and predictor.class_names == list(CLASSES)
    assert predictor.keypoint_classes == ("person",)
    assert predictor.model.cfg.input.min_size == 160
    (det,) = predictor.predict([np.zeros((100, 150, 3), np.uint8)])
    assert predictor.to_json(det)["width"] == 150
    assert set(det.labels.tolist()) <= {1, 2, 3}

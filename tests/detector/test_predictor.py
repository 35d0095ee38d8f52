"""detector/predictor.py: what the Predictor tells its users (the service among them) about its model."""

from __future__ import annotations

from dataclasses import replace

from detector.data.coco_keypoints import COCO_KEYPOINT_NAMES
from detector.modeling.presets import small_r18_fpn
from detector.modeling.rcnn import build_model
from detector.predictor import Predictor


def test_the_predictor_names_its_classes_and_keypoints():
    predictor = Predictor(build_model(small_r18_fpn()), speed="exact")
    assert predictor.class_names == ["__background__", "circle", "square", "triangle", "person"]
    assert (predictor.has_masks, predictor.has_keypoints) == (True, True)
    assert predictor.keypoint_names == COCO_KEYPOINT_NAMES and predictor.keypoint_classes == ("person",)


def test_a_model_without_keypoints_has_no_keypoint_names_or_classes():
    predictor = Predictor(build_model(replace(small_r18_fpn(), keypoint=None)), speed="exact")
    assert predictor.has_keypoints is False
    assert predictor.keypoint_names == () and predictor.keypoint_classes == ()

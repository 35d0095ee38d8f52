"""detector/data/coco_keypoints.py: the one copy of COCO's person keypoints and skeleton."""

from __future__ import annotations

import json

from detector.data.coco_keypoints import COCO_KEYPOINT_NAMES, COCO_SKELETON, skeleton_1_based
from detector.data.synthetic import CATEGORIES

# The "skeleton" of the person category in COCO's person_keypoints_val2017.json, as published (1-based).
PUBLISHED_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip


def test_skeleton_is_0_based_and_converts_to_cocos_file_numbering() -> None:
    assert skeleton_1_based() == PUBLISHED_SKELETON
    assert all(0 <= i < len(COCO_KEYPOINT_NAMES) for pair in COCO_SKELETON for i in pair)


def test_limbs_name_the_points_they_join() -> None:
    named = {(COCO_KEYPOINT_NAMES[a], COCO_KEYPOINT_NAMES[b]) for a, b in COCO_SKELETON}
    assert {("left_ankle", "left_knee"), ("nose", "left_eye"), ("left_shoulder", "right_shoulder")} <= named
    assert len(named) == len(COCO_SKELETON) == 19


def test_synthetic_annotations_write_cocos_1_based_skeleton() -> None:
    person = json.loads(json.dumps(CATEGORIES))[-1]  # as written to the annotation file
    assert person["keypoints"] == list(COCO_KEYPOINT_NAMES)
    assert person["skeleton"] == PUBLISHED_SKELETON

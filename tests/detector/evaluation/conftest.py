"""Fixtures: the small COCO dict of ``coco_samples`` and the tiny COCO sample in shared/ (skipped if absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pycocotools.coco import COCO

from detector.evaluation.ground_truth import coco_from_dict, load_ground_truth

from tests.tiny_coco import tiny_coco_root

from .coco_samples import small_coco_dict


@pytest.fixture
def small_coco() -> COCO:
    return coco_from_dict(small_coco_dict())


def _tiny_coco_file(name: str) -> Path:
    return tiny_coco_root() / "annotations" / name


@pytest.fixture(scope="session")
def tiny_instances_path() -> Path:
    return _tiny_coco_file("instances_val2017.json")


@pytest.fixture(scope="session")
def tiny_keypoints_path() -> Path:
    return _tiny_coco_file("person_keypoints_val2017.json")


@pytest.fixture(scope="session")
def tiny_instances(tiny_instances_path) -> COCO:
    return load_ground_truth(tiny_instances_path)


@pytest.fixture(scope="session")
def tiny_keypoints(tiny_keypoints_path) -> COCO:
    return load_ground_truth(tiny_keypoints_path)

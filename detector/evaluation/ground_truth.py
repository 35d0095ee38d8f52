"""The ground truth of an evaluation: a COCO annotation file (read by ``detector.data.coco_file``, here
under the name evaluation gives it) and whether it can score an IoU type."""

from __future__ import annotations

import logging

from pycocotools.coco import COCO

from detector.data.coco_file import coco_from_dict  # noqa: F401 (re-exported: evaluation's name for them)
from detector.data.coco_file import load_coco_file as load_ground_truth  # noqa: F401

logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm", "keypoints")


def check_iou_type_supported(coco_gt: COCO, iou_type: str) -> None:
    """Raise a ValueError if ``coco_gt`` cannot score ``iou_type`` (unknown type, or keypoints without any)."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"unknown IoU type {iou_type!r}, expected one of {', '.join(IOU_TYPES)}")
    if iou_type != "keypoints":
        return
    cat_ids = keypoint_category_ids(coco_gt)
    if not cat_ids:
        raise ValueError("keypoints asked for, but no category of the annotations has keypoints "
                         "(use a person_keypoints_*.json file)")
    for ann in coco_gt.loadAnns(coco_gt.getAnnIds(catIds=cat_ids)):
        if "keypoints" not in ann or "num_keypoints" not in ann:
            raise ValueError(f"annotation {ann.get('id')!r} of a category with keypoints has no "
                             "'keypoints' or no 'num_keypoints'")


def keypoint_category_ids(coco_gt: COCO) -> list[int]:
    """The ids of the categories that name keypoints (COCO: person)."""
    return sorted(c["id"] for c in coco_gt.dataset["categories"] if "keypoints" in c)

"""Load a COCO annotation file (the ground truth) into a pycocotools ``COCO`` index."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

from pycocotools.coco import COCO

logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm", "keypoints")


def load_ground_truth(path: str | Path) -> COCO:
    """The COCO index of an annotation file; a ValueError starting with the path if it is not one."""
    path = Path(path)
    try:
        with path.open() as f:
            dataset = json.load(f)
        return coco_from_dict(dataset)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {_reason(e)}") from None


def coco_from_dict(dataset: dict) -> COCO:
    """The COCO index of an annotation file's contents (``images``, ``annotations``, ``categories``)."""
    if not isinstance(dataset, dict):
        raise ValueError(f"an annotation file holds a JSON object, not a {type(dataset).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"the annotations have no {key!r} list")
    coco = COCO()
    coco.dataset = dataset
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco.createIndex()
    except (KeyError, TypeError) as e:
        raise ValueError(f"an image, annotation or category lacks a field or is not an object ({e!r})") from None
    return coco


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


def _reason(e: Exception) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e)

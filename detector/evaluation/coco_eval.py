"""COCO AP/AR of a list of results against a ground truth, by pycocotools' ``COCOeval``.

Shape shorthand of ``precision``: T IoU thresholds (10: .50:.05:.95), R recall thresholds
(101: 0:.01:1), K categories, A area ranges (all, small, medium, large; keypoints: all, medium,
large), M max detections per image ((1, 10, 100); keypoints: (20,)).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.evaluation.coco_results import RESULT_KEY, validate_results
from detector.evaluation.ground_truth import check_iou_type_supported, keypoint_category_ids

logger = logging.getLogger(__name__)

# The names of COCOeval.stats, in its order.
DETECTION_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


@dataclass
class CocoEvalResult:
    """The scores of one IoU type.

    stats: pycocotools' ``stats`` by name (-1 where the ground truth has nothing to score).
    per_category_ap: {category name: AP at IoU .50:.95, area all, most detections}; nan without ground truth.
    precision (ndarray[T, R, K, A, M]): COCOeval's ``eval['precision']``, -1 where undefined.
    iou_thrs (T,), rec_thrs (R,), max_dets (M,): the axes of ``precision``.
    summary: the text that ``COCOeval.summarize()`` prints.
    """

    iou_type: str
    stats: dict[str, float]
    per_category_ap: dict[str, float]
    precision: np.ndarray
    iou_thrs: np.ndarray
    rec_thrs: np.ndarray
    max_dets: list[int]
    summary: str


def evaluate_coco(coco_gt: COCO, results: Sequence[Mapping], iou_type: str) -> CocoEvalResult:
    """Score the ``results`` that carry ``iou_type``'s key against every image of ``coco_gt``.

    A result whose image or category id ``coco_gt`` lacks is a ValueError naming the id.
    For keypoints only the categories that have keypoints are scored.
    For segm the results' boxes are dropped so that the area ranges use the mask area, as for the ground truth
    (pycocotools would otherwise take the box area).
    """
    check_iou_type_supported(coco_gt, iou_type)
    validate_results(list(results), coco_gt)
    key = RESULT_KEY[iou_type]
    selected = [copy.deepcopy(dict(r)) for r in results if key in r]  # loadRes writes into the results
    if iou_type == "segm":
        for r in selected:
            r.pop("bbox", None)

    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # pycocotools prints its progress and the summary
        coco_dt = coco_gt.loadRes(selected) if selected else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if iou_type == "keypoints":  # the other categories have no keypoints to score (pycocotools fails on them)
            evaluator.params.catIds = keypoint_category_ids(coco_gt)
        evaluator.evaluate()
        evaluator.accumulate()
    logger.debug("%s", log.getvalue())
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()

    names = KEYPOINT_STAT_NAMES if iou_type == "keypoints" else DETECTION_STAT_NAMES
    params = evaluator.params
    precision = evaluator.eval["precision"]
    return CocoEvalResult(
        iou_type=iou_type,
        stats={name: float(v) for name, v in zip(names, evaluator.stats, strict=True)},
        per_category_ap=_per_category_ap(coco_gt, precision, params.catIds),
        precision=precision,
        iou_thrs=np.asarray(params.iouThrs),
        rec_thrs=np.asarray(params.recThrs),
        max_dets=list(params.maxDets),
        summary=summary.getvalue(),
    )


def _empty_results(coco_gt: COCO) -> COCO:
    """A results index with no detection: ``COCO.loadRes([])`` fails on its first result."""
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": copy.deepcopy(coco_gt.dataset["categories"]), "annotations": []}
    coco_dt.createIndex()
    return coco_dt


def _per_category_ap(coco_gt: COCO, precision: np.ndarray, cat_ids: Sequence[int]) -> dict[str, float]:
    """{name: mean precision over IoUs and recalls, area all, last max-dets}; nan where all are -1."""
    result = {}
    for k, cat_id in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]  # (T, R)
        p = p[p > -1]
        result[coco_gt.cats[cat_id]["name"]] = float(np.mean(p)) if p.size else float("nan")
    return result

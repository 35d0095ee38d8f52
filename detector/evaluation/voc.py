"""PASCAL VOC box AP as the Fast R-CNN paper reports it: 11-point interpolated AP at IoU 0.5.

Per class, detections are taken by decreasing score; each goes to the ground-truth box of its image
that it overlaps most. IoU >= 0.5 with a box not yet taken: a true positive, and the box is taken;
IoU < 0.5, or a box already taken (a duplicate): a false positive; IoU >= 0.5 with an ignored box
(COCO's crowd, VOC's difficult): neither. AP is the mean, over recall
levels 0, 0.1, ..., 1, of the highest precision reached at that recall or beyond (0 if never reached).
Unlike VOC's devkit, IoU uses continuous coordinates (no +1 on widths), as COCO does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pycocotools.coco import COCO
from torchvision.ops import box_iou

IOU_THRESHOLD = 0.5
# i / 10 rather than np.arange(0, 1.1, 0.1), whose 0.30000000000000004 misses a recall of exactly 0.3.
RECALL_LEVELS = tuple(i / 10 for i in range(11))


@dataclass
class VocResult:
    """per_class_ap: {category name: AP} for each category with ground truth; mean_ap: their mean (0 if none)."""

    per_class_ap: dict[str, float]
    mean_ap: float


def eleven_point_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Mean over r in 0, 0.1, ..., 1 of max(precision[recall >= r]), 0 where no recall reaches r."""
    total = 0.0
    for level in RECALL_LEVELS:
        reached = precision[recall >= level]
        total += float(reached.max()) if reached.size else 0.0
    return total / len(RECALL_LEVELS)


@dataclass
class ImageGroundTruth:
    """The boxes of one class in one image: boxes (Tensor[G, 4], float64) x1, y1, x2, y2; ignore (ndarray[G], bool)."""

    boxes: torch.Tensor
    ignore: np.ndarray


Detection = tuple[float, int, Sequence[float]]  # (score, image id, [x1, y1, x2, y2])


def class_ap(gt_by_image: Mapping[int, ImageGroundTruth], detections: Sequence[Detection]) -> float:
    """11-point AP of one class, from its ground truth by image id and its detections in any order."""
    num_gt = sum(int((~g.ignore).sum()) for g in gt_by_image.values())
    if num_gt == 0:
        raise ValueError("a class without ground truth has no AP")
    best_gt, best_iou = _best_overlaps(gt_by_image, detections)  # (D,), (D,)
    taken = {image_id: np.zeros(len(g.boxes), dtype=bool) for image_id, g in gt_by_image.items()}
    tp, fp = [], []
    for i in sorted(range(len(detections)), key=lambda i: -detections[i][0]):  # stable: ties keep input order
        image_id, j = detections[i][1], best_gt[i]
        if best_iou[i] >= IOU_THRESHOLD and gt_by_image[image_id].ignore[j]:
            continue  # a detection of a crowd / difficult box counts as nothing
        hit = best_iou[i] >= IOU_THRESHOLD and not taken[image_id][j]  # else a miss or a duplicate
        if hit:
            taken[image_id][j] = True
        tp.append(hit)
        fp.append(not hit)
    tp_cum, fp_cum = np.cumsum(tp, dtype=np.float64), np.cumsum(fp, dtype=np.float64)
    recall = tp_cum / num_gt
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    return eleven_point_ap(recall, precision)


def _best_overlaps(gt_by_image: Mapping[int, ImageGroundTruth], detections: Sequence[Detection]):
    """For each detection, the index of the ground-truth box of its image it overlaps most, and that IoU."""
    best_gt = np.zeros(len(detections), dtype=np.int64)
    best_iou = np.zeros(len(detections), dtype=np.float64)  # 0 where the image has no box of the class
    by_image = defaultdict(list)
    for i, (_, image_id, _) in enumerate(detections):
        by_image[image_id].append(i)
    for image_id, index in by_image.items():
        gt = gt_by_image.get(image_id)
        if gt is None or len(gt.boxes) == 0:
            continue
        boxes = torch.tensor([detections[i][2] for i in index], dtype=torch.float64).reshape(-1, 4)
        iou, j = box_iou(boxes, gt.boxes).max(dim=1)  # (D_i, G) -> (D_i,)
        best_gt[index], best_iou[index] = j.numpy(), iou.numpy()
    return best_gt, best_iou


def voc_ap(coco_gt: COCO, results: Sequence[Mapping]) -> VocResult:
    """VOC 11-point box AP of each category of ``coco_gt`` that has ground truth, and their mean."""
    gt_anns = defaultdict(lambda: defaultdict(list))  # category id -> image id -> annotations
    for ann in coco_gt.dataset["annotations"]:
        gt_anns[ann["category_id"]][ann["image_id"]].append(ann)
    dets = defaultdict(list)  # category id -> (score, image id, xyxy)
    for r in results:
        if "bbox" in r:
            x, y, w, h = r["bbox"]
            dets[r["category_id"]].append((float(r["score"]), r["image_id"], [x, y, x + w, y + h]))

    per_class = {}
    for cat_id in sorted(coco_gt.getCatIds()):
        gt_by_image = {image_id: _image_gt(anns) for image_id, anns in gt_anns[cat_id].items()}
        if not any((~g.ignore).any() for g in gt_by_image.values()):
            continue
        per_class[coco_gt.cats[cat_id]["name"]] = class_ap(gt_by_image, dets[cat_id])
    mean = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return VocResult(per_class_ap=per_class, mean_ap=mean)


def _image_gt(anns: Sequence[Mapping]) -> ImageGroundTruth:
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
    # Not COCOeval's "ignore": it writes that into the ground truth, for keypoints also on persons without any.
    ignore = [bool(a.get("iscrowd", 0) or a.get("difficult", 0)) for a in anns]
    return ImageGroundTruth(boxes=torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
                    ignore=np.array(ignore, dtype=bool))

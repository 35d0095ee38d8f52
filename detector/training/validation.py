"""COCO AP of the model being trained, on a validation set, through the same path as ``detector.eval``."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from pycocotools.coco import COCO

from detector.distributed import DistInfo, gather, shard
from detector.evaluation.category_map import label_to_category_id
from detector.evaluation.coco_eval import evaluate_coco
from detector.evaluation.ground_truth import keypoint_category_ids, load_ground_truth
from detector.evaluation.inference import predict_coco_results
from detector.modeling.rcnn import RCNN

logger = logging.getLogger(__name__)


def load_validation_set(images_dir: Path, annotation_file: Path) -> COCO:
    """The validation ground truth, checked before training starts; ValueError naming the bad path."""
    if not Path(images_dir).is_dir():
        raise ValueError(f"{images_dir}: validation images folder not found")
    return load_ground_truth(annotation_file)


def evaluate(model: RCNN, coco_gt: COCO, images_dir: Path, *, device: torch.device, name: str,
             batch_size: int = 2, dist_info: DistInfo = DistInfo()) -> dict[str, dict[str, float]] | None:
    """{iou type: pycocotools' stats by name} for boxes, and masks and keypoints where the model and the
    annotations have them. The model as trained runs (speed "exact"), not a fast copy: the figures are
    those of the weights saved beside them. Leaves the model in training mode.

    Under torchrun every process calls it: each predicts its share of the images (``shard``) and rank 0
    gathers and scores them all (the others get None). No process waits idle in a collective while one
    predicts the whole set, which on COCO takes longer than NCCL's 10-minute timeout."""
    from detector.predictor import Predictor  # the predictor sits above the training code

    predictor = Predictor(model, device=device, name=name, speed="exact")
    mapping = label_to_category_id(predictor.class_names, coco_gt.dataset["categories"])
    iou_types = ["bbox"] + ["segm"] * predictor.has_masks
    if predictor.has_keypoints and keypoint_category_ids(coco_gt):
        iou_types.append("keypoints")
    records = shard(coco_gt.loadImgs(sorted(coco_gt.getImgIds())), dist_info)
    try:
        local = predict_coco_results(predictor, records, images_dir, mapping, batch_size=batch_size,
                                     with_masks="segm" in iou_types, with_keypoints="keypoints" in iou_types)
    finally:
        model.train()
    results = gather(local, dist_info)
    if not dist_info.is_main:
        return None
    return {t: evaluate_coco(coco_gt, results, t).stats for t in iou_types}

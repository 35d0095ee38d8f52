"""COCO evaluation: AP/AR by pycocotools, VOC07 11-point AP, results files, PR curves.

``python -m detector.eval`` (``detector/eval.py``) is the command line on top of these modules.
"""

from detector.evaluation.category_map import category_id_to_label, label_to_category_id
from detector.evaluation.coco_eval import CocoEvalResult, evaluate_coco
from detector.evaluation.coco_results import detections_to_coco, iou_types_in, load_results, validate_results
from detector.evaluation.ground_truth import coco_from_dict, load_ground_truth
from detector.evaluation.voc import VocResult, voc_ap

__all__ = [
    "CocoEvalResult",
    "VocResult",
    "category_id_to_label",
    "coco_from_dict",
    "detections_to_coco",
    "evaluate_coco",
    "iou_types_in",
    "label_to_category_id",
    "load_ground_truth",
    "load_results",
    "validate_results",
    "voc_ap",
]

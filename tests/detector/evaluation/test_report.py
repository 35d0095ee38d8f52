import json
import math

from detector.evaluation.coco_eval import evaluate_coco
from detector.evaluation.report import format_category_table, format_voc, metrics_dict
from detector.evaluation.voc import VocResult, voc_ap

from .coco_samples import ground_truth_as_results


def test_category_table_lists_every_category_in_percent():
    table = format_category_table({"person": 0.5, "dog": 1.0, "traffic light": float("nan"), "cat": 0.25},
                                  columns=3)
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, 2 rows
    assert lines[2] == "person         50.0 | dog           100.0 | traffic light     -"
    assert lines[3] == "cat            25.0"
    assert format_category_table({}) == "(no categories)"


def test_voc_line():
    line = format_voc(VocResult(per_class_ap={"person": 0.5, "dog": 0.25}, mean_ap=0.375))
    assert line == "VOC07 11-point AP@0.5 (boxes): mAP 37.50 [person 50.0, dog 25.0]"


def test_metrics_are_json_with_stats_per_iou_type(small_coco):
    results = ground_truth_as_results(small_coco)
    evaluations = [evaluate_coco(small_coco, results, t) for t in ("bbox", "keypoints")]
    evaluations[0].per_category_ap["cat"] = float("nan")
    metrics = metrics_dict(evaluations, voc_ap(small_coco, results), inference_s=None, scoring_s=0.5)
    metrics = json.loads(json.dumps(metrics, allow_nan=False))
    assert metrics["bbox"] == evaluations[0].stats and metrics["keypoints"] == evaluations[1].stats
    assert metrics["per_category_ap"]["bbox"]["cat"] is None
    assert math.isclose(metrics["voc"]["mAP"], 1.0)
    assert metrics["timing"] == {"inference_s": None, "scoring_s": 0.5}
    assert "voc" not in metrics_dict(evaluations[1:], None, inference_s=1.0, scoring_s=0.5)

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from detector.evaluation.coco_eval import DETECTION_STAT_NAMES, KEYPOINT_STAT_NAMES, evaluate_coco
from detector.evaluation.ground_truth import coco_from_dict

from .coco_samples import ground_truth_as_results, perturbed_results



def _pycocotools_stats(coco_gt, results, iou_type):
    """What pycocotools computes on its own from the same results."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _assert_perfect(result):
    for name in ("AP", "AP50", "AP75"):
        assert result.stats[name] == pytest.approx(1.0), name
    # Area ranges: 1 where the ground truth has objects of that size, -1 where it has none.
    assert all(v == pytest.approx(1.0) or v == -1.0 for k, v in result.stats.items() if k.startswith("AP"))
    scored = [ap for ap in result.per_category_ap.values() if not np.isnan(ap)]
    assert scored and all(ap == pytest.approx(1.0) for ap in scored)


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_ground_truth_as_results_scores_1_on_a_small_dataset(small_coco, iou_type):
    result = evaluate_coco(small_coco, ground_truth_as_results(small_coco), iou_type)
    _assert_perfect(result)
    names = KEYPOINT_STAT_NAMES if iou_type == "keypoints" else DETECTION_STAT_NAMES
    assert list(result.stats) == list(names)
    assert result.stats["AR100" if iou_type != "keypoints" else "AR"] == pytest.approx(1.0)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_as_results_scores_1_on_tiny_coco(tiny_instances, iou_type):
    result = evaluate_coco(tiny_instances, ground_truth_as_results(tiny_instances), iou_type)
    _assert_perfect(result)
    assert len(result.per_category_ap) == 80
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in result.summary


def test_ground_truth_keypoints_score_1_on_tiny_coco(tiny_keypoints):
    result = evaluate_coco(tiny_keypoints, ground_truth_as_results(tiny_keypoints), "keypoints")
    _assert_perfect(result)
    assert result.stats["AR"] == pytest.approx(1.0)
    assert result.summary.count("\n") == 10


def _only(results, fields):
    """The results that have the first of ``fields``, with no other of bbox, segmentation, keypoints."""
    dropped = {"bbox", "segmentation", "keypoints"} - set(fields)
    return [{k: v for k, v in r.items() if k not in dropped} for r in results if fields[0] in r]


# The fields that pycocotools' loadRes takes for each IoU type (keypoints: with the box, as we write them).
FIELDS = {"bbox": ["bbox"], "segm": ["segmentation"], "keypoints": ["keypoints", "bbox"]}


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_perturbed_results_score_what_pycocotools_does(tiny_keypoints, tiny_instances, iou_type):
    coco_gt = tiny_keypoints if iou_type == "keypoints" else tiny_instances
    results = _only(perturbed_results(coco_gt), FIELDS[iou_type])
    result = evaluate_coco(coco_gt, results, iou_type)
    assert 0.05 < result.stats["AP"] < 0.95
    assert list(result.stats.values()) == _pycocotools_stats(coco_gt, results, iou_type).tolist()


def test_segm_scores_mask_areas_even_when_results_have_boxes(tiny_instances):
    """pycocotools would take the boxes' areas for the area ranges; the mask's is the definition."""
    with_boxes = perturbed_results(tiny_instances, seed=1)
    masks_only = _only(with_boxes, ["segmentation"])
    stats = list(evaluate_coco(tiny_instances, with_boxes, "segm").stats.values())
    assert stats == _pycocotools_stats(tiny_instances, masks_only, "segm").tolist()
    assert stats != _pycocotools_stats(tiny_instances, with_boxes, "segm").tolist()  # APs, APm, APl differ


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_no_results_score_0(small_coco, tiny_keypoints, iou_type):
    for coco_gt in (small_coco, tiny_keypoints):
        result = evaluate_coco(coco_gt, [], iou_type)
        assert result.stats["AP"] == 0.0
        assert all(v in (0.0, -1.0) for v in result.stats.values())
        assert result.per_category_ap and all(ap == 0.0 for ap in result.per_category_ap.values())


def test_results_without_the_iou_types_field_score_0(small_coco):
    boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in ground_truth_as_results(small_coco)]
    assert evaluate_coco(small_coco, boxes_only, "segm").stats["AP"] == 0.0
    assert evaluate_coco(small_coco, boxes_only, "bbox").stats["AP"] == pytest.approx(1.0)


def test_category_without_ground_truth_has_nan_ap(small_coco):
    dataset = copy.deepcopy(small_coco.dataset)
    dataset["categories"].append({"id": 30, "name": "cat"})
    result = evaluate_coco(coco_from_dict(dataset), ground_truth_as_results(small_coco), "bbox")
    assert np.isnan(result.per_category_ap["cat"])
    assert result.per_category_ap["dog"] == pytest.approx(1.0)
    assert result.precision.shape == (10, 101, 3, 4, 3)


def test_evaluating_does_not_change_the_results(small_coco):
    results = ground_truth_as_results(small_coco)
    before = copy.deepcopy(results)
    for iou_type in ("bbox", "segm", "keypoints"):
        evaluate_coco(small_coco, results, iou_type)
    assert results == before


def test_an_unknown_image_id_is_an_error_naming_it(small_coco):
    results = ground_truth_as_results(small_coco)
    results[3]["image_id"] = 12345
    with pytest.raises(ValueError, match="result 3: image id 12345 is not in the annotations"):
        evaluate_coco(small_coco, results, "bbox")

import numpy as np
import pytest
import torch

from detector.evaluation.voc import ImageGroundTruth, class_ap, eleven_point_ap, voc_ap

from .coco_samples import ground_truth_as_results


def _gt(boxes, ignore=None):
    ignore = [False] * len(boxes) if ignore is None else ignore
    return ImageGroundTruth(boxes=torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
                            ignore=np.array(ignore, dtype=bool))


def test_eleven_point_ap_by_hand():
    # Recall 0.3 exactly with precision 1, nothing beyond: levels 0, .1, .2, .3 give 1, the 7 others 0.
    assert eleven_point_ap(np.array([0.3]), np.array([1.0])) == pytest.approx(4 / 11)
    # Precision interpolated from the right: at level .5 the best precision at recall >= .5 is 0.8.
    recall, precision = np.array([0.25, 0.5, 1.0]), np.array([0.5, 0.8, 0.4])
    assert eleven_point_ap(recall, precision) == pytest.approx((6 * 0.8 + 5 * 0.4) / 11)
    assert eleven_point_ap(np.array([]), np.array([])) == 0.0


def test_class_ap_on_a_hand_worked_example():
    gt = {1: _gt([[0, 0, 10, 10], [20, 20, 30, 30]]),
          2: _gt([[0, 0, 10, 10], [50, 50, 60, 60]], ignore=[False, True])}  # 3 boxes count, 1 crowd
    detections = [
        (0.9, 1, [0, 0, 10, 10]),  # TP on image 1's first box
        (0.8, 1, [0, 0, 10, 10]),  # FP: a duplicate of a box already found
        (0.7, 2, [50, 50, 60, 60]),  # neither: on the crowd box
        (0.6, 2, [0, 0, 10, 9]),  # TP: IoU 90 / 100 = 0.9
        (0.5, 1, [100, 100, 110, 110]),  # FP: overlaps nothing
        (0.4, 1, [20, 20, 30, 30]),  # TP
    ]
    # In score order, the crowd one left out: TP FP TP FP TP over 3 boxes.
    #   recall    1/3 1/3 2/3 2/3 1
    #   precision 1   1/2 2/3 1/2 3/5
    # levels 0, .1, .2, .3 (recall >= r from the 1st on): max precision 1       -> 4 x 1
    # levels .4, .5, .6    (from the 3rd on):             max(2/3, 1/2, 3/5)   -> 3 x 2/3
    # levels .7, .8, .9, 1 (the 5th only):                3/5                  -> 4 x 3/5
    # AP = (4 + 2 + 2.4) / 11 = 8.4 / 11
    assert class_ap(gt, detections) == pytest.approx(8.4 / 11)
    assert class_ap(gt, list(reversed(detections))) == pytest.approx(8.4 / 11)  # order given does not matter


def test_iou_threshold_is_inclusive_at_one_half():
    gt = {1: _gt([[0, 0, 10, 10]])}
    assert class_ap(gt, [(1.0, 1, [0, 0, 10, 5])]) == pytest.approx(1.0)  # IoU 50 / 100
    assert class_ap(gt, [(1.0, 1, [0, 0, 10, 4.9])]) == 0.0
    assert class_ap(gt, [(1.0, 7, [0, 0, 10, 10])]) == 0.0  # an image without boxes of the class
    assert class_ap(gt, []) == 0.0
    with pytest.raises(ValueError, match="without ground truth"):
        class_ap({1: _gt([[0, 0, 10, 10]], ignore=[True])}, [])


def test_ground_truth_as_results_scores_1(small_coco, tiny_instances):
    for coco_gt in (small_coco, tiny_instances):
        result = voc_ap(coco_gt, ground_truth_as_results(coco_gt))
        assert result.mean_ap == pytest.approx(1.0)
        assert all(ap == pytest.approx(1.0) for ap in result.per_class_ap.values())
    with_boxes = {a["category_id"] for a in tiny_instances.dataset["annotations"] if not a["iscrowd"]}
    assert len(result.per_class_ap) == len(with_boxes)


def test_classes_without_detections_score_0_and_count_in_the_mean(small_coco):
    results = [r for r in ground_truth_as_results(small_coco) if r["category_id"] == 1]
    result = voc_ap(small_coco, results)
    assert result.per_class_ap == {"person": pytest.approx(1.0), "dog": 0.0}
    assert result.mean_ap == pytest.approx(0.5)
    assert voc_ap(small_coco, []).mean_ap == 0.0

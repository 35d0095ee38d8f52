import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from detector.evaluation.coco_eval import evaluate_coco
from detector.evaluation.coco_results import (
    detections_to_coco,
    iou_types_in,
    load_results,
    validate_results,
    write_results,
)
from detector.structures import Detections

from .coco_samples import ground_truth_as_results


def _detections(with_keypoints=False):
    keypoints = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3) if with_keypoints else None
    return Detections(boxes=torch.tensor([[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 5.0, 5.0]]),
                      scores=torch.tensor([0.9, 0.3]), labels=torch.tensor([1, 2]),
                      image_size=(80, 100), keypoints=keypoints)


def _rles(image_size, boxes):
    masks = np.zeros((*image_size, len(boxes)), dtype=np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        masks[y1:y2, x1:x2, k] = 1
    return mask_utils.encode(np.asfortranarray(masks))  # counts as bytes


def test_boxes_become_xywh_and_labels_category_ids():
    results = detections_to_coco(_detections(), 7, {1: 18, 2: 1})
    assert len(results) == 2
    assert results[0]["image_id"] == 7 and results[0]["category_id"] == 18
    assert results[0]["bbox"] == [10.0, 20.0, 30.0, 40.0]
    assert results[0]["score"] == pytest.approx(0.9)
    assert results[1]["category_id"] == 1
    assert "segmentation" not in results[0] and "keypoints" not in results[0]
    json.dumps(results)


def test_a_label_without_category_is_skipped():
    results = detections_to_coco(_detections(), 7, {2: 5})
    assert [r["category_id"] for r in results] == [5]
    assert results[0]["bbox"] == [0.0, 0.0, 5.0, 5.0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode under numpy 2
def test_masks_become_rle_with_str_counts():
    rles = _rles((80, 100), [(10, 20, 40, 60), (0, 0, 5, 5)])
    results = detections_to_coco(_detections(), 7, {1: 18, 2: 1}, rles=rles)
    segmentation = results[0]["segmentation"]
    assert segmentation["size"] == [80, 100] and isinstance(segmentation["counts"], str)
    assert mask_utils.area(segmentation) == 30 * 40
    assert mask_utils.decode(segmentation).sum() == 30 * 40
    json.dumps(results)
    assert "segmentation" not in detections_to_coco(_detections(), 7, {1: 18}, rles=rles, with_masks=False)[0]
    with pytest.raises(ValueError, match="1 masks for 2 detections of image 7"):
        detections_to_coco(_detections(), 7, {1: 18}, rles=rles[:1])


def test_keypoints_become_flat_triples_with_visibility_1():
    det = _detections(with_keypoints=True)
    results = detections_to_coco(det, 7, {1: 18, 2: 1})
    keypoints = results[1]["keypoints"]
    assert len(keypoints) == 17 * 3
    assert keypoints[0::3] == det.keypoints[1, :, 0].tolist()
    assert keypoints[1::3] == det.keypoints[1, :, 1].tolist()
    assert keypoints[2::3] == [1] * 17
    assert "keypoints" not in detections_to_coco(det, 7, {1: 18}, with_keypoints=False)[0]


def test_only_detections_with_keypoints_get_them():
    det = replace(_detections(with_keypoints=True), has_keypoints=torch.tensor([False, True]))
    results = detections_to_coco(det, 7, {1: 18, 2: 1})
    assert "keypoints" not in results[0]
    assert results[1]["keypoints"][0::3] == det.keypoints[1, :, 0].tolist()


def test_person_keypoints_alone_score_keypoint_ap_1(small_coco):
    """Detections of persons and dogs, keypoints for the persons only (as a model gives them): each
    ground-truth person's keypoints as predictions give keypoint AP 1, and no dog result has keypoints."""
    results = []
    label_of = {1: 1, 18: 2}
    for image_id in small_coco.getImgIds():
        anns = [a for a in small_coco.imgToAnns[image_id] if not a["iscrowd"] and a.get("num_keypoints", 1) > 0]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        keypoints = torch.tensor([a.get("keypoints", [0] * 51) for a in anns], dtype=torch.float32).reshape(-1, 17, 3)
        labels = torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.int64)
        image = small_coco.imgs[image_id]
        det = Detections(boxes=boxes, scores=torch.ones(len(anns)), labels=labels,
                         image_size=(image["height"], image["width"]), keypoints=keypoints, has_keypoints=labels == 1)
        results += detections_to_coco(det, image_id, {1: 1, 2: 18})
    assert {r["category_id"] for r in results} == {1, 18}
    assert all(("keypoints" in r) == (r["category_id"] == 1) for r in results)
    assert evaluate_coco(small_coco, results, "keypoints").stats["AP"] == pytest.approx(1.0)
    assert evaluate_coco(small_coco, results, "bbox").stats["AP"] < 1.0  # the persons without keypoints were left out


def test_ground_truth_through_detections_scores_ap_1(small_coco):
    """Ground truth -> Detections -> COCO results: AP 1 for boxes and masks."""
    results = []
    label_of = {1: 1, 18: 2}
    for image_id in small_coco.getImgIds():
        anns = [a for a in small_coco.imgToAnns[image_id] if not a["iscrowd"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        image = small_coco.imgs[image_id]
        det = Detections(boxes=boxes, scores=torch.ones(len(anns)),
                         labels=torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.int64),
                         image_size=(image["height"], image["width"]))
        rles = [small_coco.annToRLE(a) for a in anns]
        results += detections_to_coco(det, image_id, {1: 1, 2: 18}, rles=rles)
    assert iou_types_in(results) == ["bbox", "segm"]
    for iou_type in ("bbox", "segm"):
        assert evaluate_coco(small_coco, results, iou_type).stats["AP"] == pytest.approx(1.0)


def test_iou_types_in_results(small_coco):
    results = ground_truth_as_results(small_coco)
    assert iou_types_in(results) == ["bbox", "segm", "keypoints"]
    assert iou_types_in([{"segmentation": {}}]) == ["segm"]
    assert iou_types_in([]) == []


@pytest.mark.parametrize("change, problem", [
    ({"image_id": 999}, "result 0: image id 999 is not in the annotations"),
    ({"category_id": 2}, "result 0: category id 2 is not in the annotations"),
    ({"bbox": [1, 2, 3]}, r"result 0: bbox \[1, 2, 3\] is not"),
])
def test_ids_the_annotations_do_not_know_are_errors(small_coco, change, problem):
    results = ground_truth_as_results(small_coco)
    results[0].update(change)
    with pytest.raises(ValueError, match=problem):
        validate_results(results, small_coco)


def test_results_without_required_fields_are_errors(small_coco):
    with pytest.raises(ValueError, match="JSON list"):
        validate_results({"image_id": 10}, small_coco)
    with pytest.raises(ValueError, match="result 0 has no 'score'"):
        validate_results([{"image_id": 10, "category_id": 1, "bbox": [0, 0, 1, 1]}], small_coco)
    with pytest.raises(ValueError, match="result 0 has none of bbox, segmentation, keypoints"):
        validate_results([{"image_id": 10, "category_id": 1, "score": 1.0}], small_coco)


def test_write_then_load_round_trips_and_errors_name_the_file(small_coco, tmp_path):
    results = ground_truth_as_results(small_coco)
    path = tmp_path / "sub" / "results.json"
    write_results(results, path)
    assert load_results(path, small_coco) == results
    results[2]["image_id"] = 4242
    write_results(results, path)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: result 2: image id 4242"):
        load_results(path, small_coco)
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'nope.json'))}: no such file"):
        load_results(tmp_path / "nope.json", small_coco)


def test_masks_come_from_the_detections_when_not_given():
    det = _detections()
    det.mask_probs = torch.ones(2, 28, 28)  # every pixel of each box
    results = detections_to_coco(det, 7, {1: 18, 2: 1})
    segmentation = results[0]["segmentation"]
    assert segmentation["size"] == [80, 100] and isinstance(segmentation["counts"], str)
    # The box's pixels, give or take the pixel that pasting's interpolation spreads over the border.
    assert mask_utils.toBbox(segmentation).tolist() == pytest.approx([10.0, 20.0, 30.0, 40.0], abs=2)
    assert "segmentation" not in detections_to_coco(det, 7, {1: 18}, with_masks=False)[0]

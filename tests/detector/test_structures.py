"""detector/structures.py: Detections keep their per-detection tensors together."""

import pytest
import torch

from detector.structures import Detections


def _detections(has_keypoints=None) -> Detections:
    return Detections(boxes=torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 6.0, 8.0], [2.0, 0.0, 3.0, 9.0]]),
                      scores=torch.tensor([0.9, 0.8, 0.7]), labels=torch.tensor([4, 1, 4]), image_size=(10, 10),
                      keypoints=torch.arange(3 * 17 * 3, dtype=torch.float32).reshape(3, 17, 3),
                      has_keypoints=has_keypoints)


def test_keypoints_without_has_keypoints_are_every_detections():
    assert _detections().has_keypoints.tolist() == [True, True, True]
    no_keypoints = Detections(boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.int64))
    assert no_keypoints.keypoints is None and no_keypoints.has_keypoints is None


def test_indexing_keeps_keypoints_and_has_keypoints_together():
    det = _detections(has_keypoints=torch.tensor([True, False, True]))
    picked = det[torch.tensor([2, 1])]
    assert picked.has_keypoints.tolist() == [True, False]
    assert torch.equal(picked.keypoints, det.keypoints[[2, 1]])
    assert det[1].has_keypoints.tolist() == [False] and det[0:2].has_keypoints.tolist() == [True, False]
    assert det.to("cpu").has_keypoints.tolist() == [True, False, True]


def _unsorted() -> Detections:
    return Detections(boxes=torch.arange(5 * 4, dtype=torch.float32).reshape(5, 4),
                      scores=torch.tensor([0.3, 0.9, 0.5, 0.7, 0.1]), labels=torch.tensor([1, 2, 1, 3, 2]),
                      image_size=(30, 30), has_keypoints=torch.tensor([True, False, True, False, True]),
                      keypoints=torch.arange(5 * 2 * 3, dtype=torch.float32).reshape(5, 2, 3))


def test_select_keeps_the_best_scoring_of_the_chosen_labels_best_first():
    det = _unsorted()
    assert det.select().scores.tolist() == pytest.approx([0.9, 0.7, 0.5, 0.3, 0.1])
    picked = det.select(score_threshold=0.3, labels=[1, 3], max_detections=2)
    assert picked.scores.tolist() == pytest.approx([0.7, 0.5]) and picked.labels.tolist() == [3, 1]
    assert torch.equal(picked.boxes, det.boxes[[3, 2]]) and torch.equal(picked.keypoints, det.keypoints[[3, 2]])
    assert picked.has_keypoints.tolist() == [False, True] and picked.image_size == (30, 30)
    assert det.select(score_threshold=0.5).scores.tolist() == pytest.approx([0.9, 0.7, 0.5])  # at least, not above


def test_select_can_keep_nothing():
    det = _unsorted()
    assert len(det.select(labels=[])) == 0 and len(det.select(score_threshold=0.95)) == 0
    empty = Detections(boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.int64))
    assert len(empty.select(0.5, [1], 10)) == 0

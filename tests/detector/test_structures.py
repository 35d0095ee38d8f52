"""detector/structures.py: Detections keep their per-detection tensors together."""

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

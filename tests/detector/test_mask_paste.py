import numpy as np
import torch
from pycocotools import mask as mask_util

from detector.mask_paste import masks_to_rle, paste_mask_probs, paste_masks


def _case(seed=0, k=12, size=(70, 90)):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(k, 28, 28, generator=g)
    probs[0] = 1.0  # a full mask whose box touches the corner
    xy = torch.rand(k, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 1 + torch.rand(k, 2, generator=g) * 40], dim=1)
    boxes[0] = torch.tensor([0.0, 0.0, 30.0, 20.0])
    boxes[1] = torch.tensor([80.0, 60.0, 90.0, 70.0])  # at the far corner
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, size[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, size[0])
    return probs, boxes, size


def test_rle_from_boxes_equals_rle_of_full_masks():
    probs, boxes, size = _case()
    full = paste_masks(probs, boxes, size).numpy()
    expected = mask_util.encode(np.asfortranarray(full.transpose(1, 2, 0).astype(np.uint8)))
    got = masks_to_rle(probs, boxes, size)
    assert [r["counts"] for r in got] == [e["counts"].decode() for e in expected]
    decoded = mask_util.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in got])
    assert np.array_equal(decoded.transpose(2, 0, 1), full)


def test_full_mask_fills_its_box():
    probs, boxes, size = _case()
    full = paste_masks(probs[:1], boxes[:1], size)
    ys, xs = torch.nonzero(full[0], as_tuple=True)
    assert ys.min() <= 1 and xs.min() <= 1  # the reference pasting rounds the grown box toward zero
    assert abs(int(xs.max()) - 30) <= 1 and abs(int(ys.max()) - 20) <= 1


def test_soft_paste_thresholds_to_binary_paste():
    probs, boxes, size = _case(seed=1)
    assert torch.equal(paste_mask_probs(probs, boxes, size)[:, 0] > 0.5, paste_masks(probs, boxes, size))


def test_empty_detections():
    assert masks_to_rle(torch.zeros(0, 28, 28), torch.zeros(0, 4), (10, 10)) == []
    assert paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (10, 10)).shape == (0, 10, 10)

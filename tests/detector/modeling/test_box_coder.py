import math

import torch

from detector.modeling.box_coder import DEFAULT_CLAMP, decode_boxes, encode_boxes


def test_encode_follows_the_papers_formulas():
    anchor = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # centre (20, 40), w 20, h 40
    gt = torch.tensor([[12.0, 18.0, 42.0, 58.0]])  # centre (27, 38), w 30, h 40
    deltas = encode_boxes(gt, anchor, (10.0, 10.0, 5.0, 5.0))
    expected = [10 * 7 / 20, 10 * -2 / 40, 5 * math.log(30 / 20), 5 * math.log(40 / 40)]
    torch.testing.assert_close(deltas[0], torch.tensor(expected))


def test_decode_inverts_encode():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    anchors = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 50], dim=1)
    xy = torch.rand(50, 2, generator=g) * 100
    gt = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 50], dim=1)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        decoded = decode_boxes(encode_boxes(gt, anchors, weights), anchors, weights)
        torch.testing.assert_close(decoded, gt, atol=1e-3, rtol=1e-5)


def test_decode_handles_several_boxes_per_anchor_and_clamps_size():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 100.0, 100.0]])  # two classes
    boxes = decode_boxes(deltas, anchors)
    assert boxes.shape == (1, 8)
    torch.testing.assert_close(boxes[0, :4], anchors[0])
    width = boxes[0, 6] - boxes[0, 4]
    torch.testing.assert_close(width, torch.tensor(10 * math.exp(DEFAULT_CLAMP)))

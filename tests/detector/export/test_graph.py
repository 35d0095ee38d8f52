"""detector/export/graph.py run eagerly (no export, fast): the batch-vectorised selection gives each image
the detections ``RCNN`` gives it, and its free functions keep their contracts."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torchvision.ops import batched_nms

from detector.export.graph import ExportGraph, batched_nms_over_images, clip_to_sizes, rank_in_image
from detector.modeling.presets import get_preset
from detector.modeling.rcnn import RCNN
from detector.modeling.transform import batch_images, preprocess


@pytest.fixture(scope="module")
def small() -> RCNN:
    torch.manual_seed(0)
    model = RCNN(get_preset("small_r18_fpn")).eval()
    with torch.no_grad():  # random weights that favour the person class: keypoint detections in every batch
        model.roi_heads.box_head.cls_score.bias[model.cfg.class_names.index("person")] += 3.0
    return model


def _batch(model: RCNN, shapes):
    g = torch.Generator().manual_seed(1)
    images = [preprocess(torch.rand(3, h, w, generator=g), model.cfg.input) for h, w in shapes]
    return images, batch_images(images, model.cfg.input.size_divisible), torch.tensor([list(i.shape[-2:]) for i in images])


def _by_image(out: tuple, n: int):
    batch_index, boxes, scores, labels = out[:4]
    return [(boxes[batch_index == i], scores[batch_index == i], labels[batch_index == i]) for i in range(n)]


@pytest.mark.parametrize("heads", ["boxes", "all"])
def test_a_batch_gives_each_image_the_models_detections(small, heads):
    model = small if heads == "all" else RCNN(replace(small.cfg, mask=None, keypoint=None)).eval()
    if heads != "all":
        model.load_state_dict(small.state_dict(), strict=False)
    # Two images of one padded size (as RCNN.predict groups them), of other true sizes.
    images, batch, sizes = _batch(model, [(200, 300), (190, 300)])
    with torch.no_grad():
        out = ExportGraph(model)(batch, sizes)
        expected = model._predict_batch(images)
    assert len(out) == len(ExportGraph(model).output_names())
    for (boxes, scores, labels), e in zip(_by_image(out, 2), expected):
        assert len(e) > 0
        torch.testing.assert_close(boxes, e.boxes, rtol=0, atol=1e-4)  # the same order: best first
        torch.testing.assert_close(scores, e.scores, rtol=0, atol=1e-6)
        assert torch.equal(labels, e.labels)
    if heads == "all":
        masks = torch.cat([e.mask_probs for e in expected])
        order = torch.cat([torch.nonzero(out[0] == i).flatten() for i in range(2)])
        torch.testing.assert_close(out[4][order], masks, rtol=0, atol=1e-5)
        has = torch.cat([e.has_keypoints for e in expected])
        assert out[5].shape == (int(small.roi_heads.has_keypoints(out[3]).sum()), 17, 56, 56)
        assert has.any()


def test_batched_nms_over_images_is_batched_nms_with_the_image_in_the_group():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=g) * 30], dim=1)
    scores = torch.rand(200, generator=g)
    image, label = torch.randint(0, 3, (200,), generator=g), torch.randint(0, 4, (200,), generator=g)
    keep = batched_nms_over_images(boxes, scores, image * 4 + label, 0.5, torch.tensor(200.0))
    expected = batched_nms(boxes, scores, image * 4 + label, 0.5)
    assert torch.equal(keep, expected)
    assert len(keep) < 200  # some were suppressed


def test_rank_in_image_counts_within_each_image_in_order():
    image = torch.tensor([2, 0, 2, 1, 0, 2])
    assert rank_in_image(image, 3).tolist() == [0, 0, 1, 0, 1, 2]
    assert rank_in_image(image[:0], 3).tolist() == []


def test_clip_to_sizes_clips_each_box_to_its_own_image():
    boxes = torch.tensor([[-5.0, -5.0, 50.0, 50.0], [-5.0, -5.0, 50.0, 50.0]])
    sizes = torch.tensor([[40, 30], [60, 70]])  # (h, w)
    assert clip_to_sizes(boxes, sizes).tolist() == [[0, 0, 30, 40], [0, 0, 50, 50]]

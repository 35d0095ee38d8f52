"""Resizing and mapping back as torchvision's eager model transform does, for every image size.

torchvision computes the resize scale from the Python ints of ``image.shape`` in double precision; a
float32 scale (its TorchScript/tracing branch, and this project's code before) puts one side 1 px off on
about half of COCO's images, and then every detection on them moves.
"""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
from torchvision.models.detection.transform import (
    GeneralizedRCNNTransform,
    _resize_image_and_masks,
    resize_boxes,
    resize_keypoints,
)

from detector.modeling.transform import (
    InputConfig,
    batch_images,
    normalize,
    preprocess,
    rescale_detections,
    resize,
    resized_size,
)
from detector.structures import Detections
from tests.tiny_coco import tiny_coco_root


def _shape_only_bilinear(input, output_size, align_corners, scale_factors):
    """Stands in for the C++ bilinear kernel only: F.interpolate and torchvision have already computed the
    output size (the thing under test) when they call it; the pixels are not needed."""
    assert scale_factors is None  # recompute_scale_factor=True: the kernel gets the size, not the scale
    return torch.empty((*input.shape[:2], *output_size), device="meta")


def _torchvision_sizes(sizes: list[tuple[int, int]], min_size: int, max_size: int) -> list[tuple[int, int]]:
    """torchvision's resized (H, W) for each (H, W), through its own ``_resize_image_and_masks``."""
    one_pixel = torch.empty(1, 1, 1)
    with mock.patch.object(torch._C._nn, "upsample_bilinear2d", _shape_only_bilinear):
        return [tuple(_resize_image_and_masks(one_pixel.expand(3, h, w), min_size, max_size)[0].shape[-2:])
                for h, w in sizes]


def test_the_shape_only_kernel_gives_the_real_kernels_shapes():
    sizes = [(427, 640), (640, 427), (230, 352), (333, 500), (375, 500), (612, 612), (100, 1000)]
    real = [tuple(_resize_image_and_masks(torch.zeros(3, h, w), 800, 1333)[0].shape[-2:]) for h, w in sizes]
    assert _torchvision_sizes(sizes, 800, 1333) == real
    assert real[0] == (800, 1199) and real[2] == (800, 1224)  # sizes a float32 scale gets 1 px off


def test_resized_size_is_torchvisions_on_a_grid():
    """Every shorter side 200-1000 with every longer side 1-2.5 times it (landscape), and portrait for
    every 4th longer side: about 900,000 sizes."""
    landscape = [(s, long) for s in range(200, 1001) for long in range(s, int(2.5 * s) + 1)]
    portrait = [(w, h) for h, w in landscape[::4]]
    sizes = landscape + portrait
    ours = [resized_size(h, w, 800, 1333) for h, w in sizes]
    theirs = _torchvision_sizes(sizes, 800, 1333)
    wrong = [(size, o, t) for size, o, t in zip(sizes, ours, theirs) if o != t]
    assert not wrong, f"{len(wrong)} sizes differ, e.g. {wrong[:5]}"


def test_resized_size_on_tiny_coco_at_every_training_scale():
    """The 100 real COCO sizes of the sample, at inference's 800 and the multi-scale training sizes."""
    root = tiny_coco_root()
    sizes = []
    for split in ("val2017", "train2017"):
        images = json.loads((root / "annotations" / f"instances_{split}.json").read_text())["images"]
        sizes += [(im["height"], im["width"]) for im in images]
    assert len(sizes) == 100
    for min_size in (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800):
        assert [resized_size(h, w, min_size, 1333) for h, w in sizes] == _torchvision_sizes(sizes, min_size, 1333)


@pytest.mark.parametrize("size", [(427, 640), (230, 352), (640, 427)])
def test_resize_gives_torchvisions_pixels(size):
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0))
    cfg = InputConfig()
    reference = GeneralizedRCNNTransform(cfg.min_size, cfg.max_size, list(cfg.pixel_mean), list(cfg.pixel_std)).eval()
    theirs, _ = reference.resize(reference.normalize(image), None)
    ours = resize(normalize(image, cfg), cfg.min_size, cfg.max_size)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("resized, original", [((800, 1199), (427, 640)), ((800, 1224), (230, 352)), ((1199, 800), (640, 427))])
def test_rescale_detections_is_torchvisions_resize_boxes_and_keypoints(resized, original):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * torch.tensor([resized[1], resized[0]]) * 0.8
    boxes = torch.cat([xy, xy + torch.rand(50, 2, generator=g) * 100], dim=1)  # (50, 4) xyxy
    keypoints = torch.rand(50, 17, 3, generator=g) * 500  # (50, 17, 3) x, y, score
    det = Detections(boxes=boxes, scores=torch.rand(50, generator=g), labels=torch.ones(50, dtype=torch.int64),
                     image_size=resized, keypoints=keypoints)
    out = rescale_detections(det, original)
    assert torch.equal(out.boxes, resize_boxes(boxes, resized, original))
    assert torch.equal(out.keypoints, resize_keypoints(keypoints, resized, original))
    assert out.image_size == original


def test_padded_batch_is_torchvisions():
    """Two real-size images (COCO 427 x 640 and 640 x 427 resized) padded into one batch as torchvision pads."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 800, 1199, generator=g), torch.rand(3, 1199, 800, generator=g)]
    reference = GeneralizedRCNNTransform(800, 1333, [0.0] * 3, [1.0] * 3)
    assert torch.equal(batch_images(images, 32), reference.batch_images(images, size_divisible=32))


def test_preprocess_normalises_a_uint8_images_copy_in_place_and_leaves_a_float_image_alone():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 427, 640), dtype=torch.uint8, generator=g)
    cfg = InputConfig()
    expected = resize(normalize(image.float() / 255, cfg), cfg.min_size, cfg.max_size)
    assert torch.equal(preprocess(image, cfg), expected)
    as_float = image.float() / 255
    before = as_float.clone()
    assert torch.equal(preprocess(as_float, cfg), expected)
    assert torch.equal(as_float, before)  # the caller's tensor is not overwritten

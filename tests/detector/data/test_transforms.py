"""Transforms move image, boxes, masks and keypoints together."""

from __future__ import annotations

import pytest
import torch

from detector.data.coco_keypoints import COCO_KEYPOINT_NAMES
from detector.data.transforms import (
    COCO_FLIP_INDICES,
    Compose,
    RandomHorizontalFlip,
    Resize,
    flip_indices_for,
    hflip,
    resize,
)
from detector.modeling.transform import resized_size
from detector.structures import Targets


def _random_sample(seed: int, height: int = 37, width: int = 53, k: int = 4) -> tuple[torch.Tensor, Targets]:
    """An image and k objects: integer boxes, masks filling them, keypoints inside them (some unlabelled)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
    x1 = torch.randint(0, width - 4, (k,), generator=g)
    y1 = torch.randint(0, height - 4, (k,), generator=g)
    x2 = x1 + 1 + (torch.rand(k, generator=g) * (width - x1 - 1)).long()
    y2 = y1 + 1 + (torch.rand(k, generator=g) * (height - y1 - 1)).long()
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    masks = torch.zeros((k, height, width), dtype=torch.uint8)
    for i, (a, b, c, d) in enumerate(boxes.long().tolist()):
        masks[i, b:d, a:c] = 1
    t = torch.rand((k, 17, 2), generator=g)
    xy = boxes[:, None, :2] + t * (boxes[:, None, 2:] - boxes[:, None, :2])  # (k, 17, 2) inside the boxes
    v = torch.randint(0, 3, (k, 17, 1), generator=g).float()
    keypoints = torch.cat([xy.round() * (v > 0), v], dim=-1)  # unlabelled ones are (0, 0, 0), as in COCO
    labels = torch.randint(1, 5, (k,), generator=g)
    return image, Targets(boxes=boxes, labels=labels, masks=masks, keypoints=keypoints)


def _mask_box(mask: torch.Tensor) -> list[int]:
    """(x1, y1, x2, y2) of a mask's pixels, x2/y2 one past the last column/row."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_coco_flip_indices_swap_left_and_right() -> None:
    assert COCO_FLIP_INDICES == (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
    for k, j in enumerate(COCO_FLIP_INDICES):
        assert COCO_FLIP_INDICES[j] == k
        mirrored = COCO_KEYPOINT_NAMES[k].replace("left", "@").replace("right", "left").replace("@", "right")
        assert COCO_KEYPOINT_NAMES[j] == mirrored
    with pytest.raises(ValueError, match="left_paw"):
        flip_indices_for(["nose", "left_paw"])


@pytest.mark.parametrize("seed", range(5))
def test_flip_twice_is_identity(seed: int) -> None:
    image, targets = _random_sample(seed)
    again_image, again = hflip(*hflip(image, targets))
    assert torch.equal(again_image, image)
    assert torch.equal(again.boxes, targets.boxes)
    assert torch.equal(again.masks, targets.masks)
    assert torch.equal(again.keypoints, targets.keypoints)
    assert torch.equal(again.labels, targets.labels)


def test_flip_mirrors_x_and_swaps_left_right_keypoints() -> None:
    width = 10
    image = torch.zeros((3, 8, width), dtype=torch.uint8)
    image[0, :, 0] = 255  # red first column
    masks = torch.zeros((1, 8, width), dtype=torch.uint8)
    masks[0, 2:6, 1:4] = 1
    keypoints = torch.zeros((1, 17, 3))
    keypoints[0, 0] = torch.tensor([5.0, 1.0, 1.0])  # nose
    keypoints[0, 1] = torch.tensor([2.0, 3.0, 2.0])  # left_eye; right_eye unlabelled
    keypoints[0, 9] = torch.tensor([3.0, 5.0, 2.0])  # left_wrist
    keypoints[0, 10] = torch.tensor([1.0, 4.0, 1.0])  # right_wrist
    targets = Targets(torch.tensor([[1.0, 2.0, 4.0, 6.0]]), torch.tensor([1]), masks, keypoints)

    flipped_image, flipped = hflip(image, targets)
    assert (flipped_image[0, :, -1] == 255).all() and (flipped_image[0, :, :-1] == 0).all()
    assert flipped.boxes.tolist() == [[6.0, 2.0, 9.0, 6.0]]  # x1' = W - x2, x2' = W - x1
    assert _mask_box(flipped.masks[0]) == [6, 2, 9, 6]
    kp = flipped.keypoints[0]
    assert kp[0].tolist() == [5.0, 1.0, 1.0]
    assert kp[2].tolist() == [8.0, 3.0, 2.0]  # the left eye, mirrored, is now the right eye
    assert kp[1].tolist() == [0.0, 0.0, 0.0]  # the unlabelled right eye stays (0, 0, 0)
    assert kp[10].tolist() == [7.0, 5.0, 2.0] and kp[9].tolist() == [9.0, 4.0, 1.0]


def test_random_flip_probability_and_seed() -> None:
    image, targets = _random_sample(0)
    assert RandomHorizontalFlip(p=0.0)(image, targets)[0] is image
    assert torch.equal(RandomHorizontalFlip(p=1.0)(image, targets)[0], image.flip(-1))

    def decisions(flip: RandomHorizontalFlip) -> list[bool]:
        return [not torch.equal(flip(image, targets)[0], image) for _ in range(40)]

    first = decisions(RandomHorizontalFlip(generator=7))
    assert first == decisions(RandomHorizontalFlip(generator=torch.Generator().manual_seed(7)))
    assert 5 < sum(first) < 35
    assert first != decisions(RandomHorizontalFlip(generator=8))
    with pytest.raises(ValueError, match="1.5"):
        RandomHorizontalFlip(p=1.5)


def test_flip_rejects_keypoint_count_mismatch() -> None:
    image, targets = _random_sample(0)
    with pytest.raises(ValueError, match="17 keypoints"):
        hflip(image, targets, flip_indices=(1, 0))


def test_resize_draws_torchvisions_size() -> None:
    """Training images get the size torchvision's model transform gives them: 427x640 (COCO's most common
    size) -> 800x1199, where a float32 scale gives 799; 480x640 -> 800x1066, truncated, not rounded."""
    for (h, w), expected in [((427, 640), (800, 1199)), ((480, 640), (800, 1066)), ((100, 1000), (133, 1333))]:
        image, targets = _random_sample(0, height=h, width=w)
        assert tuple(Resize((800,), 1333)(image, targets)[0].shape[1:]) == expected
        assert resized_size(h, w, 800, 1333) == expected


@pytest.mark.parametrize("seed, size", [(0, (80, 120)), (1, (20, 31)), (2, (59, 47))])
def test_resize_moves_boxes_masks_and_keypoints_together(seed: int, size: tuple[int, int]) -> None:
    image, targets = _random_sample(seed)
    out_image, out = resize(image, targets, size)
    new_h, new_w = size
    sx = torch.tensor(new_w, dtype=torch.float32) / image.shape[2]  # torchvision's float32 ratios
    sy = torch.tensor(new_h, dtype=torch.float32) / image.shape[1]
    assert out_image.shape == (3, new_h, new_w) and out_image.dtype == torch.uint8
    assert out.masks.shape == (len(targets), new_h, new_w) and set(out.masks.unique().tolist()) <= {0, 1}
    assert torch.equal(out.boxes, (targets.boxes * torch.stack([sx, sy, sx, sy])).clamp(min=0))
    for box, mask in zip(out.boxes, out.masks):
        # the resized mask's extent is the resized box, to within a pixel of nearest-neighbour rounding
        assert torch.allclose(torch.tensor(_mask_box(mask), dtype=torch.float32), box, atol=1.0)
    labelled = targets.keypoints[..., 2] > 0
    assert torch.allclose(out.keypoints[..., 0][labelled], targets.keypoints[..., 0][labelled] * sx)
    assert torch.allclose(out.keypoints[..., 1][labelled], targets.keypoints[..., 1][labelled] * sy)
    assert (out.keypoints[~labelled] == 0).all()
    assert torch.equal(out.keypoints[..., 2], targets.keypoints[..., 2])


def test_resize_draws_among_min_sizes_reproducibly() -> None:
    image, targets = _random_sample(0, height=40, width=60)

    def shorter_sides(transform: Resize) -> list[int]:
        return [min(transform(image, targets)[0].shape[1:]) for _ in range(20)]

    sides = shorter_sides(Resize((16, 24, 32), max_size=1000, generator=3))
    assert set(sides) == {16, 24, 32}
    assert sides == shorter_sides(Resize((16, 24, 32), max_size=1000, generator=3))
    assert max(Resize((32,), max_size=36)(image, targets)[0].shape[1:]) == 36
    with pytest.raises(ValueError, match="min_sizes"):
        Resize((0,), 100)


def test_transforms_without_objects() -> None:
    image = torch.zeros((3, 30, 40), dtype=torch.uint8)
    empty = Targets(
        boxes=torch.zeros((0, 4)),
        labels=torch.zeros((0,), dtype=torch.int64),
        masks=torch.zeros((0, 30, 40), dtype=torch.uint8),
        keypoints=torch.zeros((0, 17, 3)),
    )
    out_image, out = Compose([Resize((15,), 100), RandomHorizontalFlip(p=1.0)])(image, empty)
    assert out_image.shape == (3, 15, 20)
    assert out.boxes.shape == (0, 4) and out.masks.shape == (0, 15, 20) and out.keypoints.shape == (0, 17, 3)


def test_compose_applies_in_order() -> None:
    image, targets = _random_sample(3)
    composed = Compose([RandomHorizontalFlip(p=1.0), Resize((20,), 1000)])
    expected_image, expected = resize(*hflip(image, targets), resized_size(37, 53, 20, 1000))
    out_image, out = composed(image, targets)
    assert torch.equal(out_image, expected_image) and torch.equal(out.boxes, expected.boxes)
    assert torch.equal(out.keypoints, expected.keypoints) and torch.equal(out.masks, expected.masks)

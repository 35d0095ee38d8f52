"""Targets for the model's heads, reproducible augmentation and resumable batches."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from detector.data.coco import CocoDataset
from detector.modeling.presets import fasterrcnn_r50_fpn, small_r18_fpn
from detector.structures import Targets
from detector.training.data import EpochBatches, TrainingSet, build_loader, label_map_for, model_targets


def _targets(k: int, keypoints: torch.Tensor | None = None) -> Targets:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(k, 1)
    return Targets(boxes=boxes, labels=torch.ones(k, dtype=torch.int64), keypoints=keypoints)


def test_objects_without_keypoints_get_zeros_when_the_model_has_a_keypoint_head() -> None:
    out = model_targets(_targets(3), num_keypoints=17, label_map=None)
    assert out.keypoints.shape == (3, 17, 3) and not out.keypoints.any()
    assert model_targets(_targets(0), num_keypoints=17, label_map=None).keypoints.shape == (0, 17, 3)


def test_keypoints_are_dropped_for_a_model_without_a_keypoint_head() -> None:
    assert model_targets(_targets(2, torch.ones(2, 17, 3)), num_keypoints=0, label_map=None).keypoints is None


def test_labels_are_mapped_by_class_name() -> None:
    mapping = label_map_for(["__background__", "dog", "person"], fasterrcnn_r50_fpn().class_names)
    assert mapping.tolist() == [0, 18, 1]  # torchvision's COCO slots: person 1, dog 18
    targets = replace(_targets(2), labels=torch.tensor([2, 1]))
    assert model_targets(targets, num_keypoints=0, label_map=mapping).labels.tolist() == [1, 18]
    assert label_map_for(["__background__", "a"], ["__background__", "a"]) is None
    with pytest.raises(ValueError, match="'zebra-crossing'"):
        label_map_for(["__background__", "zebra-crossing"], fasterrcnn_r50_fpn().class_names)


@pytest.fixture(scope="module")
def coco(tiny_synthetic) -> CocoDataset:
    return CocoDataset(tiny_synthetic.train_images, tiny_synthetic.train_annotations, with_masks=True)


def test_items_are_a_function_of_seed_epoch_and_index(coco) -> None:
    train_set = TrainingSet(coco, small_r18_fpn(), min_sizes=(96, 128, 160), max_size=300, seed=0)
    a, b = train_set[(0, 1)], train_set[(0, 1)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1].boxes, b[1].boxes)
    shapes = {tuple(train_set[(epoch, 1)][0].shape) for epoch in range(8)}
    assert len(shapes) > 1  # another epoch, another scale
    for epoch in range(4):
        image, targets, _ = train_set[(epoch, 0)]
        assert min(image.shape[1:]) in (96, 128, 160)
        assert targets.masks.shape[1:] == image.shape[1:]
        assert targets.keypoints.shape == (len(targets), 17, 3)


def test_epoch_batches_skip_those_already_seen(coco) -> None:
    train_set = TrainingSet(coco, small_r18_fpn(), min_sizes=(64,), max_size=100, seed=0)
    loader, batches = build_loader(train_set, batch_size=2, workers=0, seed=0)
    assert isinstance(batches, EpochBatches)
    batches.start(epoch=1)
    epoch = list(batches)
    assert sorted(i for batch in epoch for _, i in batch) == list(range(len(coco)))
    assert all(e == 1 for batch in epoch for e, _ in batch)
    batches.start(epoch=1, skip=1)
    assert list(batches) == epoch[1:] and len(batches) == len(epoch) - 1
    images, targets, infos = next(iter(loader))
    assert len(images) == len(targets) == len(infos) == len(epoch[1])
    assert [info["image_id"] for info in infos] == [coco[i][2]["image_id"] for _, i in epoch[1]]


def test_worker_processes_give_the_same_batches(coco) -> None:
    train_set = TrainingSet(coco, small_r18_fpn(), min_sizes=(48, 64, 80), max_size=120, seed=5)

    def epoch_of(workers: int) -> list:
        loader, batches = build_loader(train_set, batch_size=2, workers=workers, seed=5)
        batches.start(epoch=2, skip=1)
        return [(images, [t.boxes for t in targets]) for images, targets, _ in loader]

    serial, parallel = epoch_of(0), epoch_of(2)
    assert len(serial) == len(parallel) > 0
    for (images_a, boxes_a), (images_b, boxes_b) in zip(serial, parallel):
        assert len(images_a) == len(images_b) == len(boxes_a) == len(boxes_b) > 0
        assert all(torch.equal(a, b) for a, b in zip(images_a, images_b))
        assert all(torch.equal(a, b) for a, b in zip(boxes_a, boxes_b))


def test_the_loader_pins_memory_only_when_asked(coco) -> None:
    """The trainer asks on CUDA (``pin_memory=device.type == "cuda"``): pinned images, non-blocking copies."""
    train_set = TrainingSet(coco, small_r18_fpn(), min_sizes=(64,), max_size=100, seed=0)
    assert build_loader(train_set, batch_size=2, workers=0, seed=0, pin_memory=True)[0].pin_memory
    assert not build_loader(train_set, batch_size=2, workers=0, seed=0)[0].pin_memory

"""The training data: a COCO-format set made into the model's targets, augmented reproducibly, in
aspect-ratio-grouped batches whose position in the epoch a checkpoint can record.

Every random choice of the pipeline is a pure function of (seed, epoch, image index): the batch order
comes from ``GroupedBatchSampler`` (seed, epoch), each image's scale and flip from a generator seeded
with (seed, epoch, index). So the same batches come out whatever the number of workers, and a resumed
run picks up in the middle of an epoch by skipping the batches already seen.

Shape shorthand: K objects of an image, P keypoints per object.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from detector.data.batching import GroupedBatchSampler, aspect_ratio_groups, collate
from detector.data.coco import CocoDataset
from detector.data.transforms import COCO_FLIP_INDICES, Compose, RandomHorizontalFlip, Resize, flip_indices_for
from detector.modeling.rcnn import ModelConfig
from detector.structures import Targets

logger = logging.getLogger(__name__)

Key = tuple[int, int]  # (epoch, image index)


def model_targets(targets: Targets, *, num_keypoints: int, label_map: torch.Tensor | None) -> Targets:
    """Targets as the model's heads need them: labels in the model's numbering, keypoints (K, P, 3) when
    the model has a keypoint head (zeros for objects without any), none when it has not."""
    labels = targets.labels if label_map is None else label_map[targets.labels]
    if num_keypoints == 0:
        keypoints = None
    elif targets.keypoints is None:
        keypoints = torch.zeros((len(targets), num_keypoints, 3), dtype=torch.float32)  # (K, P, 3)
    elif targets.keypoints.shape[1] != num_keypoints:
        raise ValueError(f"the data has {targets.keypoints.shape[1]} keypoints per object, the model {num_keypoints}")
    else:
        keypoints = targets.keypoints
    return replace(targets, labels=labels, keypoints=keypoints)


def label_map_for(dataset_names: Sequence[str], model_names: Sequence[str]) -> torch.Tensor | None:
    """Tensor[C_data + 1] taking the data set's labels to the model's, matched by class name; None when
    the numberings agree. ValueError when the model lacks one of the data set's classes."""
    if list(dataset_names) == list(model_names):
        return None
    index = {name: label for label, name in enumerate(model_names)}
    missing = [name for name in dataset_names[1:] if name not in index]
    if missing:
        raise ValueError(f"the model has no class named {', '.join(map(repr, missing))}")
    return torch.tensor([0] + [index[name] for name in dataset_names[1:]], dtype=torch.int64)


class TrainingSet(Dataset):
    """``(epoch, index) -> (image, targets, info)``: a ``CocoDataset`` item, resized with its shorter
    side drawn from ``min_sizes`` and flipped with probability 1/2, by a generator seeded from
    (seed, epoch, index)."""

    def __init__(self, coco: CocoDataset, model_cfg: ModelConfig, *, min_sizes: Sequence[int], max_size: int,
                 seed: int, label_map: torch.Tensor | None = None) -> None:
        self.coco = coco
        self.min_sizes = tuple(min_sizes)
        self.max_size = max_size
        Resize(self.min_sizes, max_size)  # a ValueError for bad sizes now, not in the first batch
        self.seed = seed
        self.label_map = label_map
        self.num_keypoints = model_cfg.keypoint.num_keypoints if model_cfg.keypoint is not None else 0
        names = model_cfg.keypoint_names
        if not self.num_keypoints:
            self.flip_indices = COCO_FLIP_INDICES  # unused: no keypoints to swap
        elif len(names) == self.num_keypoints:
            self.flip_indices = flip_indices_for(names)  # left_* <-> right_*
        else:
            logger.warning("the model's keypoints are not named: flipping leaves their order as it is")
            self.flip_indices = tuple(range(self.num_keypoints))
        if self.num_keypoints and coco.has_keypoints and coco.num_keypoints != self.num_keypoints:
            raise ValueError(
                f"{coco.annotation_file}: {coco.num_keypoints} keypoints per object, the model has {self.num_keypoints}"
            )

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, key: Key):
        epoch, index = key
        image, targets, info = self.coco[index]
        targets = model_targets(targets, num_keypoints=self.num_keypoints, label_map=self.label_map)
        seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        augment = Compose([Resize(self.min_sizes, self.max_size, generator=generator),
                           RandomHorizontalFlip(0.5, self.flip_indices, generator=generator)])
        image, targets = augment(image, targets)
        return image, targets, info


class EpochBatches(Sampler[list[Key]]):
    """The batches of one epoch as ``(epoch, index)`` keys, after the first ``skip`` of them.

    Call ``start(epoch, skip)`` before iterating; a checkpoint records (epoch, batches consumed)."""

    def __init__(self, batches: GroupedBatchSampler) -> None:
        self.batches = batches
        self.epoch = 0
        self.skip = 0

    def start(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.batches.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[Key]]:
        for i, batch in enumerate(self.batches):
            if i >= self.skip:
                yield [(self.epoch, index) for index in batch]

    def __len__(self) -> int:
        return max(len(self.batches) - self.skip, 0)


def build_loader(train_set: TrainingSet, batch_size: int, *, workers: int, seed: int, rank: int = 0,
                 world_size: int = 1, group_factor: int = 0,
                 pin_memory: bool = False) -> tuple[DataLoader, EpochBatches]:
    """The loader and the batch sampler whose ``start`` positions it. Under torchrun each process
    draws its share of every epoch from a DistributedSampler, grouped within it by aspect ratio
    (``aspect_ratio_groups``: by orientation for ``group_factor`` 0, torchvision's bins for more).
    ``pin_memory`` (for a CUDA device): the images come in page-locked memory, copied to the GPU without
    blocking."""
    groups = aspect_ratio_groups((train_set.coco.image_size(i) for i in range(len(train_set))), group_factor)
    outer = None
    if world_size > 1:
        outer = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    batches = EpochBatches(GroupedBatchSampler(groups, batch_size, seed=seed, sampler=outer))
    if len(batches.batches) == 0:
        raise ValueError(f"{train_set.coco.annotation_file}: no training image with objects")
    loader = DataLoader(
        train_set,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,  # the items do not depend on worker state, so workers may live on
        # The loader draws a seed for its workers at every epoch: from its own generator, so that the
        # global torch RNG (which the model's sampling uses) sees the same draws in a resumed run.
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, batches

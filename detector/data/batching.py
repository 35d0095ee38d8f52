"""Batches for detection training: aspect-ratio grouping and a collate for images of different sizes.

Grouping landscape (w >= h) and portrait (w < h) images into separate batches keeps the padding
the model adds to make a batch one tensor small, as in torchvision's detection reference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from torch import Tensor
from torch.utils.data import Sampler

from detector.structures import Targets


def orientation_groups(sizes: Iterable[tuple[int, int]]) -> list[int]:
    """Group id of each image from its (H, W): 0 when W >= H (landscape or square), 1 when W < H."""
    return [0 if width >= height else 1 for height, width in sizes]


def aspect_ratio_groups(sizes: Iterable[tuple[int, int]], factor: int) -> list[int]:
    """Group id of each image from its (H, W) by its aspect ratio W / H, as torchvision's detection reference
    groups with ``--aspect-ratio-group-factor k``: the 2k + 1 cuts 2 ** linspace(-1, 1, 2k + 1) between 1/2
    and 2 make 2k + 2 groups (k = 3: 8); a ratio on a cut goes above it. ``factor`` 0: ``orientation_groups``."""
    if factor < 0:
        raise ValueError(f"the aspect-ratio group factor must be at least 0, got {factor}")
    if factor == 0:
        return orientation_groups(sizes)
    cuts = 2.0 ** np.linspace(-1, 1, 2 * factor + 1)
    ratios = [width / height for height, width in sizes]
    return np.searchsorted(cuts, ratios, side="right").tolist()


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of indices in which every index has the same group id.

    Each epoch visits every index exactly once (the last, partial batch of each group included
    unless ``drop_last``). The order is a permutation drawn from (seed, epoch), so it is the same
    on every run and every process; call ``set_epoch`` before each epoch for a new one. Give
    ``sampler`` (e.g. a DistributedSampler) to take the index order from it instead.
    """

    def __init__(
        self,
        group_ids: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        sampler: Iterable[int] | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _order(self) -> list[int]:
        if self.sampler is not None:
            return list(self.sampler)
        if not self.shuffle:
            return list(range(len(self.group_ids)))
        rng = np.random.default_rng([self.seed, self.epoch])  # a distinct stream for each (seed, epoch)
        return rng.permutation(len(self.group_ids)).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = {}
        for index in self._order():
            bucket = buckets.setdefault(self.group_ids[index], [])
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket
                buckets[self.group_ids[index]] = []
        if not self.drop_last:
            for group in sorted(buckets):
                if buckets[group]:
                    yield buckets[group]

    def __len__(self) -> int:
        indices = self._order() if self.sampler is not None else range(len(self.group_ids))
        counts: dict[int, int] = {}
        for index in indices:
            counts[self.group_ids[index]] = counts.get(self.group_ids[index], 0) + 1
        round_ = (lambda c: c // self.batch_size) if self.drop_last else (lambda c: math.ceil(c / self.batch_size))
        return sum(round_(c) for c in counts.values())


def collate(batch: Sequence[tuple[Tensor, Targets, dict]]) -> tuple[list[Tensor], list[Targets], list[dict]]:
    """[(image, targets, info), ...] -> ([image, ...], [targets, ...], [info, ...]); sizes may differ."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    infos = [item[2] for item in batch]
    return images, targets, infos

"""Aspect-ratio grouped batches and the collate for images of different sizes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from detector.data.batching import GroupedBatchSampler, aspect_ratio_groups, collate, orientation_groups
from detector.structures import Targets

SIZES = [(30, 40), (40, 30), (20, 20), (50, 10), (10, 50), (33, 32), (32, 33), (7, 9), (9, 7), (60, 61), (61, 60)]


def _epoch(sampler: GroupedBatchSampler) -> list[list[int]]:
    return [list(batch) for batch in sampler]


def test_aspect_ratio_groups_are_torchvisions_bins() -> None:
    """Factor 3 (torchvision's COCO recipe): cuts at 2 ** (i / 3) for i in -3..3, 8 groups; a ratio on a cut
    goes above it (torchvision's bisect_right); factor 0 is the orientation."""
    sizes = [(100, 40), (100, 50), (480, 360), (100, 100), (480, 640), (100, 200), (100, 300)]  # (H, W)
    assert aspect_ratio_groups(sizes, 3) == [0, 1, 2, 4, 5, 7, 7]
    assert aspect_ratio_groups(sizes, 1) == [0, 1, 1, 2, 2, 3, 3]
    assert aspect_ratio_groups(sizes, 0) == orientation_groups(sizes) == [1, 1, 1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="at least 0, got -1"):
        aspect_ratio_groups(sizes, -1)


def test_orientation_groups_split_landscape_and_portrait() -> None:
    assert orientation_groups([(30, 40), (40, 30), (20, 20)]) == [0, 1, 0]  # square counts as landscape


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_never_mix_orientations_and_cover_every_index(batch_size: int, drop_last: bool) -> None:
    groups = orientation_groups(SIZES)
    sampler = GroupedBatchSampler(groups, batch_size, seed=1, drop_last=drop_last)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = _epoch(sampler)
        assert len(batches) == len(sampler)
        assert all(len({groups[i] for i in batch}) == 1 for batch in batches)
        seen = [i for batch in batches for i in batch]
        assert len(seen) == len(set(seen))
        if drop_last:
            assert all(len(batch) == batch_size for batch in batches)
            assert len(seen) == sum((groups.count(g) // batch_size) * batch_size for g in (0, 1))
        else:
            assert sorted(seen) == list(range(len(SIZES)))


def test_order_is_deterministic_per_seed_and_epoch() -> None:
    groups = orientation_groups(SIZES)
    a, b = GroupedBatchSampler(groups, 2, seed=5), GroupedBatchSampler(groups, 2, seed=5)
    assert _epoch(a) == _epoch(b)
    first = _epoch(a)
    a.set_epoch(1)
    assert _epoch(a) != first  # a new order each epoch ...
    a.set_epoch(0)
    assert _epoch(a) == first  # ... that set_epoch brings back
    assert _epoch(GroupedBatchSampler(groups, 2, seed=6)) != first
    assert [i for batch in _epoch(GroupedBatchSampler(groups, 100, shuffle=False)) for i in batch] == [
        i for g in (0, 1) for i, gi in enumerate(groups) if gi == g
    ]


def test_order_from_another_sampler() -> None:
    groups = [0, 1, 0, 1, 0]
    sampler = GroupedBatchSampler(groups, 2, sampler=[4, 3, 2, 1])
    assert _epoch(sampler) == [[4, 2], [3, 1]] and len(sampler) == 2
    with pytest.raises(ValueError, match="batch_size"):
        GroupedBatchSampler(groups, 0)


class _Sized(Dataset):
    def __len__(self) -> int:
        return len(SIZES)

    def __getitem__(self, index: int):
        h, w = SIZES[index]
        targets = Targets(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([1]))
        return torch.zeros((3, h, w), dtype=torch.uint8), targets, {"image_id": index}


def test_collate_keeps_different_sizes_in_lists() -> None:
    ds = _Sized()
    images, targets, infos = collate([ds[0], ds[3]])
    assert [im.shape for im in images] == [(3, 30, 40), (3, 50, 10)]
    assert all(isinstance(t, Targets) for t in targets)
    assert infos == [{"image_id": 0}, {"image_id": 3}]
    assert collate([]) == ([], [], [])


def test_dataloader_with_grouped_batches() -> None:
    ds = _Sized()
    sampler = GroupedBatchSampler(orientation_groups(SIZES), 3, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    seen = []
    for images, targets, infos in loader:
        assert len({im.shape[2] >= im.shape[1] for im in images}) == 1
        assert len(images) == len(targets) == len(infos)
        seen += [info["image_id"] for info in infos]
    assert sorted(seen) == list(range(len(SIZES)))

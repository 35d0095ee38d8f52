"""Running under torchrun: the process's place among the others, and the few collectives training and
evaluation need. Training averages gradients with DistributedDataParallel and its logged losses with
``mean_over_ranks``; evaluation predicts a ``shard`` of the images on each process and ``gather``s them.

Without WORLD_SIZE (or with 1) everything here is a single-process pass-through: no process group.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")
BACKENDS = ("nccl", "gloo")


@dataclass(frozen=True)
class DistInfo:
    """rank of this process among world_size; local_rank among those of its machine (torchrun's LOCAL_RANK)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # init_distributed started the process group, so finish ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "cpu", backend: str | None = None) -> tuple[DistInfo, torch.device]:
    """The process's place in torchrun's world and the device it runs on: with several processes and a
    CUDA device, cuda:LOCAL_RANK. ``backend`` of the process group it starts if none is: default NCCL
    for CUDA, gloo on the CPU (gloo also suits Python objects gathered on the CPU, as evaluation's are)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown process group backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    if world_size <= 1:
        return DistInfo(), dev
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend=backend or ("nccl" if dev.type == "cuda" else "gloo"))
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns_group)
    logger.info("rank %d of %d on %s", info.rank, info.world_size, dev)
    return info, dev


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's share of ``items``: every world_size-th one, from its rank on."""
    return list(items[info.rank :: info.world_size])


def gather_to_all(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``all_gather_object``)."""
    if info.world_size == 1:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def gather(local: Sequence[T], info: DistInfo) -> list[T]:
    """The items of every rank, rank 0's first, on every rank: ``shard``'s shares put back together."""
    return [item for part in gather_to_all(list(local), info) for item in part]


def mean_over_ranks(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Each value averaged over the processes (every rank must call this at the same point)."""
    if info.world_size == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / info.world_size).tolist()))


def max_over_ranks(value: int, info: DistInfo, device: torch.device) -> int:
    if info.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def finish(info: DistInfo) -> None:
    """End the process group if ``init_distributed`` started it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()

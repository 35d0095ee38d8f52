"""Training under torchrun: one process per device, gradients averaged by DistributedDataParallel.

Without WORLD_SIZE (or with 1) everything here is a single-process pass-through.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module started the process group, so it ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """The process's place in torchrun's world and the device it trains on: with several processes
    and a CUDA device, cuda:LOCAL_RANK over NCCL; on the CPU, gloo."""
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
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns_group)
    logger.info("training as rank %d of %d on %s", info.rank, info.world_size, dev)
    return info, dev


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


def gather_to_all(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order."""
    if info.world_size == 1:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def finish(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()

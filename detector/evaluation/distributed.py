"""Share evaluation between the processes of ``torchrun``: each predicts its slice, rank 0 scores all.

Single process (no WORLD_SIZE, or 1): every function here is a no-op pass-through.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch.distributed as dist

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """rank of this process among world_size; owns_group: this module started the process group."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistContext:
    """The context that torchrun's environment describes, starting a gloo process group if none is."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    owns_group = False
    if not dist.is_initialized():
        # gloo: the results gathered are Python objects on the CPU, whatever device the model runs on.
        dist.init_process_group(backend="gloo")
        owns_group = True
    ctx = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), owns_group=owns_group)
    logger.info("evaluating as rank %d of %d", ctx.rank, ctx.world_size)
    return ctx


def shard(items: Sequence[T], ctx: DistContext) -> list[T]:
    """This rank's share of ``items``: every world_size-th one, from its rank on."""
    return list(items[ctx.rank :: ctx.world_size])


def gather(local: Sequence[T], ctx: DistContext) -> list[T]:
    """The items of every rank in rank order, on every rank (``all_gather_object``)."""
    if ctx.world_size == 1:
        return list(local)
    parts: list[list[T] | None] = [None] * ctx.world_size
    dist.all_gather_object(parts, list(local))
    return [item for part in parts for item in part]


def finish(ctx: DistContext) -> None:
    """End the process group if ``init_distributed`` started it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()

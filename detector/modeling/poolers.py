"""Multi-level RoI pooling: each box is pooled from the FPN level that suits its size
(FPN paper, eq. 1: k = floor(4 + log2(sqrt(wh) / 224)), clamped to the available levels),
with torchvision.ops.roi_align (or roi_pool).

torchvision's CPU RoIAlign runs on one thread. Without autograd, the pooler can split the RoIs across
the threads of a ``RoIAlignThreads`` that its caller owns and makes active for a call (the ``Predictor``
does): the RoIs are independent, so the numbers are those of one thread. With none active, it pools
on the calling thread. With autograd on the CPU (training) it pools by ``sparse_roi_align``: the same
numbers as a sparse matrix product, its weights computed once for all channels and its products on
torch's threads (torchvision's backward recomputes them per channel, on one thread).
Nothing here lives longer than its owner.

Shape shorthand: B boxes over the whole batch, C channels, S output size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn
from torchvision.ops import box_area, roi_align, roi_pool

from detector.modeling import sparse_roi_align


LEVEL_RULES = ("torchvision", "detectron2")


class MultiLevelRoIPooler(nn.Module):
    def __init__(
        self,
        output_size: int,
        strides: tuple[int, ...] = (4, 8, 16, 32),
        sampling_ratio: int = 2,
        aligned: bool = False,  # torchvision's checkpoints use False; Detectron2 and our own presets True
        kind: str = "align",  # "align" (Mask R-CNN) or "pool" (Fast R-CNN's RoIPool)
        canonical_size: float = 224.0,
        canonical_level: int = 4,
        levels: str = "torchvision",  # or "detectron2": where the level rule's epsilon goes (level_of)
    ) -> None:
        super().__init__()
        if kind not in ("align", "pool"):
            raise ValueError(f"pooler kind must be 'align' or 'pool', got {kind!r}")
        if levels not in LEVEL_RULES:
            raise ValueError(f"pooler levels must be one of {LEVEL_RULES}, got {levels!r}")
        self.levels = levels
        self.output_size = (output_size, output_size)
        self.scales = [1.0 / s for s in strides]
        self.min_level = int(math.log2(strides[0]))
        self.max_level = int(math.log2(strides[-1]))
        self.sampling_ratio, self.aligned, self.kind = sampling_ratio, aligned, kind
        self.canonical_size, self.canonical_level = canonical_size, canonical_level

    def level_of(self, boxes: Tensor) -> Tensor:
        """Index into the pooler's levels for each box (Tensor[B, 4]): Tensor[B] int64."""
        size = torch.sqrt(box_area(boxes))
        if self.levels == "detectron2":  # detectron2/modeling/poolers.py: the epsilon inside the log
            level = torch.floor(self.canonical_level + torch.log2(size / self.canonical_size + 1e-8))
        else:  # torchvision's LevelMapper
            level = torch.floor(self.canonical_level + torch.log2(size / self.canonical_size) + 1e-6)
        return level.clamp(self.min_level, self.max_level).to(torch.int64) - self.min_level

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """Pool ``boxes`` (one Tensor[Bi, 4] per image, in padded-image pixels) from ``features``
        (one (N, C, Hl, Wl) per level, at least as many as strides): Tensor[B, C, S, S]."""
        features = features[: len(self.scales)]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])  # (B, 5)
        channels = features[0].shape[1]
        out = features[0].new_zeros((rois.shape[0], channels, *self.output_size))
        if rois.shape[0] == 0:
            return out
        levels = self.level_of(rois[:, 1:])
        threads = _ACTIVE.get()
        parallel = threads is not None and out.device.type == "cpu" and not torch.is_grad_enabled()
        jobs = []  # (indices into rois, feature, scale): one per level, in chunks when parallel
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(levels == level)[0]
            if idx.numel():
                jobs += [(part, feature, scale) for part in (_chunks(idx) if parallel else [idx])]
        pool = threads.executor() if parallel and len(jobs) > 1 else None
        if pool is None:
            pooled = [self._pool(feature, rois[idx], scale) for idx, feature, scale in jobs]
        else:  # it lets go of the GIL, and RoIs are independent: the same numbers
            pooled = list(pool.map(lambda job: self._pool(job[1], rois[job[0]], job[2]), jobs))
        for (idx, _, _), result in zip(jobs, pooled):
            out[idx] = result.to(out.dtype)
        return out

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.kind == "pool":
            return roi_pool(feature, rois, self.output_size, spatial_scale=scale)
        if feature.requires_grad and torch.is_grad_enabled() and feature.device.type == "cpu" \
                and feature.dtype in (torch.float32, torch.float64):
            # Training on the CPU: the same numbers, a faster backward (sparse_roi_align).
            return sparse_roi_align.roi_align(feature, rois, self.output_size, scale, self.sampling_ratio,
                                              self.aligned)
        return roi_align(feature, rois, self.output_size, scale, self.sampling_ratio, self.aligned)


class RoIAlignThreads:
    """Threads for CPU RoIAlign, owned by whoever runs inference; ``close()`` (or the end of a ``with``
    block) ends them; a later use makes them again. ``with threads.active():`` lends them to the poolers called inside, in this thread
    or task only. The pool has ``torch.get_num_threads()`` threads, is made on first use (none for one
    thread), and made again after a fork, whose child has none of its parent's threads."""

    def __init__(self) -> None:
        self._pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (process id, threads, pool)

    @contextmanager
    def active(self) -> Iterator[RoIAlignThreads]:
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def executor(self) -> ThreadPoolExecutor | None:
        threads = torch.get_num_threads()
        if threads < 2:
            return None
        if self._pool is None or self._pool[:2] != (os.getpid(), threads):
            if self._pool is not None and self._pool[0] == os.getpid():
                self._pool[2].shutdown(wait=False)  # another thread count: its threads end once idle
            self._pool = (os.getpid(), threads, ThreadPoolExecutor(threads, thread_name_prefix="roi_align"))
        return self._pool[2]

    def close(self) -> None:
        """End the threads, after the work they were given."""
        if self._pool is not None and self._pool[0] == os.getpid():
            self._pool[2].shutdown(wait=True)
        self._pool = None

    def __enter__(self) -> RoIAlignThreads:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# The RoIAlignThreads lent to the poolers for the current call (RoIAlignThreads.active), if any.
_ACTIVE: ContextVar[RoIAlignThreads | None] = ContextVar("roi_align_threads", default=None)


def _chunks(idx: Tensor) -> list[Tensor]:
    """``idx`` in one chunk per CPU thread, of at least 16 RoIs each."""
    return list(idx.tensor_split(max(1, min(torch.get_num_threads(), idx.numel() // 16))))

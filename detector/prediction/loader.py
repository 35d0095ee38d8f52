"""Images decoded ahead of the model, in a pool of threads, and grouped into batches of similar size.

Decoding: ``decode_ahead`` reads files with ``read_image`` in ``workers`` threads (Pillow and NumPy release
the GIL while they decode and convert, and torch while it runs the model), at most ``ahead`` files
beyond the one the caller is at, so that memory holds a bounded number of decoded images whatever the
length of the job. A file that cannot be read gives its error, not an exception: the caller decides.

Batching: a batch is padded to its largest image, so ``size_batches`` puts images of one size bucket
together. The model resizes every image to a fixed short side (up to a longest side), so the size it
pads to depends on the aspect ratio alone: the bucket is the image's size scaled to a short side of
``BUCKET_STEPS`` steps, rounded up (one step is 32 pixels at the COCO presets' short side of 800, their
padding multiple). Images wait in their bucket until it holds a batch; past ``max_waiting`` waiting
images the fullest bucket goes as it is, and at the end every bucket goes. Failures go at once, alone.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from detector.data.images import read_image

BUCKET_STEPS = 25  # 800 / 32: the COCO presets' test short side over their padding multiple


@dataclass
class Decoded:
    """A file and its image (HxWx3 uint8 RGB), or the reason it has none."""

    path: Path
    image: np.ndarray | None = None
    error: str | None = None


def decode_ahead(paths: Iterable[Path], *, workers: int, ahead: int) -> Iterator[Decoded]:
    """Each of ``paths`` decoded, in order, by ``workers`` threads that run up to ``ahead`` files ahead."""
    if workers < 1 or ahead < 1:
        raise ValueError(f"workers and ahead must be at least 1, got {workers} and {ahead}")
    todo = iter(paths)
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: deque[Future[Decoded]] = deque(pool.submit(_decode, p) for p in islice(todo, ahead))
        try:
            while pending:
                done = pending.popleft().result()
                pending.extend(pool.submit(_decode, p) for p in islice(todo, 1))
                yield done
        finally:  # the caller stopped early (--fail-fast, an error): drop what has not started
            for future in pending:
                future.cancel()


def bucket(shape: tuple[int, ...]) -> tuple[int, int]:
    """The size bucket of an image of ``shape`` (H, W, ...): its size at a short side of BUCKET_STEPS."""
    height, width = shape[:2]
    short = max(min(height, width), 1)
    return math.ceil(height * BUCKET_STEPS / short), math.ceil(width * BUCKET_STEPS / short)


def size_batches(items: Iterable[Decoded], batch_size: int, max_waiting: int) -> Iterator[list[Decoded]]:
    """``items`` in batches of at most ``batch_size`` images of one bucket; failures alone, at once."""
    if batch_size < 1 or max_waiting < batch_size:
        raise ValueError(f"need 1 <= batch_size <= max_waiting, got {batch_size} and {max_waiting}")
    waiting: dict[tuple[int, int], list[Decoded]] = {}
    count = 0
    for item in items:
        if item.image is None:
            yield [item]
            continue
        group = waiting.setdefault(bucket(item.image.shape), [])
        group.append(item)
        count += 1
        if len(group) == batch_size or count > max_waiting:
            key = bucket(item.image.shape) if len(group) == batch_size else max(waiting, key=lambda k: len(waiting[k]))
            count -= len(waiting[key])
            yield waiting.pop(key)
    yield from waiting.values()


def _decode(path: Path) -> Decoded:
    try:
        return Decoded(path, image=read_image(path))
    except ValueError as e:  # read_image's errors name the file
        return Decoded(path, error=str(e))

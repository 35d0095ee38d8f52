"""The prediction loop of a batch job: files in, one record line per file out.

Files are decoded ahead in a pool of threads while the model runs (``loader.decode_ahead``), grouped into
batches of similar size (``loader.size_batches``), and each image's line is written and flushed as soon
as its batch is done (``jsonl.LineWriter``), so lines come in batch order, not in the order of ``files``.
A file that cannot be read gets a failure line and the loop goes on, or, with ``fail_fast``, stops
with a ValueError naming the file. A progress bar (tqdm, on stderr) shows images/s and the time left.
Memory holds about max(2 x workers, batch_size) + 5 x batch_size decoded images (decoded ahead, waiting
in their size bucket, in the batch being predicted), whatever the number of files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from detector.prediction.jsonl import LineWriter
from detector.prediction.loader import decode_ahead, size_batches
from detector.structures import Detections

MakeEntry = Callable[[Path, Detections], dict]  # (file, its detections) -> its record line


class BatchPredictor(Protocol):
    """What the loop needs of ``detector.predictor.Predictor`` (or of another backend)."""

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]: ...


@dataclass
class Summary:
    images: int = 0  # files with a result
    failed: int = 0  # files with a failure line
    detections: int = 0  # above the score threshold
    skipped: int = 0  # files that an earlier run did


def detector_entries(predictor, masks: str) -> MakeEntry:
    """Lines in the schema of the service and of predict's .json: {"file", **predictor.to_json(det)}."""
    return lambda path, det: {"file": str(path), **predictor.to_json(det, masks=masks)}


def predict_files(predictor: BatchPredictor, files: Sequence[Path], writer: LineWriter, make_entry: MakeEntry, *,
                  score_threshold: float, batch_size: int, workers: int, fail_fast: bool = False,
                  progress: bool | None = None, desc: str | None = None) -> Summary:
    """Predict ``files`` into ``writer``. progress: show the bar (None: only when stderr is a terminal)."""
    summary = Summary()
    ahead = max(2 * workers, batch_size)  # keeps every worker busy while a batch runs
    decoded = decode_ahead(files, workers=workers, ahead=ahead)
    bar = tqdm(total=len(files), unit="img", desc=desc, disable=None if progress is None else not progress)
    with contextlib.closing(decoded), bar:
        for batch in size_batches(decoded, batch_size, max_waiting=4 * batch_size):
            if batch[0].error is not None:  # a failure comes alone
                if fail_fast:
                    raise ValueError(batch[0].error)
                writer.write({"file": str(batch[0].path), "error": batch[0].error})
                summary.failed += 1
            else:
                detections = predictor.predict([item.image for item in batch])
                for item, det in zip(batch, detections, strict=True):
                    det = det[det.scores >= score_threshold]
                    writer.write(make_entry(item.path, det))
                    summary.images += 1
                    summary.detections += len(det)
            bar.update(len(batch))
    return summary

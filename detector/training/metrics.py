"""What a run reports: a tqdm bar (loss terms, it/s, ETA), OUT/metrics.jsonl and, when the tensorboard
package is installed, TensorBoard scalars. Only the main process reports.

metrics.jsonl holds one JSON object per logged iteration: {"iter" (iterations done), "epoch", "lr",
each loss term, "total", "time" (seconds per iteration)}, the loss terms and time averaged over the
iterations since the previous line.

A resumed run keeps the lines up to its checkpoint's iteration: when the file holds more (the lines a
killed run wrote after its last checkpoint, or a line cut short), it is rewritten whole and atomically
(``detector.atomic``), never truncated in place, so a crash during the rewrite leaves the old file. Then
each line is appended and flushed as it is written: rewriting the whole file for every line would cost
time growing with the run, and a line cut short by a crash or a full disk is dropped by the next resume.
A failed write raises OSError naming the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from detector.atomic import atomic_write_text

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"


class MetricsLog:
    """Every process collects its numbers (they are averaged over processes before a line is written);
    only the ``main`` one shows the bar and writes."""

    def __init__(self, out_dir: Path, *, total_iters: int, start_iter: int, main: bool = True,
                 progress: bool = True, tensorboard: bool = True) -> None:
        self.main = main
        self._window: list[dict[str, float]] = []
        self._bar = tqdm(total=total_iters, initial=start_iter, desc="train", unit="it", dynamic_ncols=True,
                         disable=not (main and progress))
        self._file: BinaryIO | None = None
        self._writer = None
        if not main:
            return
        self.path = out_dir / METRICS_NAME
        _keep_up_to(self.path, start_iter)
        self._file = self.path.open("ab", buffering=0)  # unbuffered: a line is in the file once written
        if tensorboard:
            self._writer = _summary_writer(out_dir / "tensorboard")

    def update(self, losses: dict[str, float], seconds: float, lr: float) -> None:
        """One iteration done: move the bar and keep its numbers for the next line."""
        self._window.append({**losses, "time": seconds})
        if self.main:
            short = {k.removeprefix("loss_"): f"{v:.3f}" for k, v in losses.items()}
            self._bar.set_postfix(short | {"lr": f"{lr:.2g}"}, refresh=False)
            self._bar.update(1)

    def window_means(self) -> dict[str, float]:
        """The means of the numbers kept since the last call, which forgets them."""
        window, self._window = self._window, []
        return {k: sum(w[k] for w in window) / len(window) for k in window[0]} if window else {}

    def write(self, iteration: int, epoch: int, lr: float, means: dict[str, float]) -> dict | None:
        """The metrics line after ``iteration`` iterations (main process only)."""
        if not self.main:
            return None
        line = {"iter": iteration, "epoch": epoch, "lr": lr, **means}
        data = (json.dumps(line) + "\n").encode("utf-8")
        try:
            while data:  # a raw write may take only part of it
                data = data[self._file.write(data):]
        except OSError as e:
            raise OSError(e.errno, e.strerror or str(e), str(self.path)) from e
        if self._writer is not None:
            for k, v in line.items():
                if k not in ("iter", "epoch"):
                    self._writer.add_scalar(f"train/{k}", v, iteration)
        return line

    def close(self) -> None:
        self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()


def _keep_up_to(path: Path, iteration: int) -> None:
    """Keep only the whole lines of iterations up to ``iteration`` (none when it is 0), rewriting the
    file atomically when anything is to go."""
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    kept = []
    for line in text.splitlines():
        try:
            if json.loads(line)["iter"] <= iteration:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a crash or a full disk
    new = "".join(k + "\n" for k in kept)
    if new != text:
        atomic_write_text(path, new)


def _summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the tensorboard package is optional
        logger.debug("tensorboard is not installed: no TensorBoard logs")
        return None
    return SummaryWriter(log_dir=str(log_dir))

"""The metrics log: means over the window, one JSON line each, and truncation when a run resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detector.training.metrics import METRICS_NAME, MetricsLog


def test_lines_hold_the_means_since_the_last_line(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, total_iters=4, start_iter=0, progress=False, tensorboard=False)
    log.update({"loss_a": 1.0, "total": 1.0}, seconds=0.5, lr=0.1)
    log.update({"loss_a": 3.0, "total": 3.0}, seconds=1.5, lr=0.1)
    log.write(2, 0, 0.1, log.window_means())
    assert log.window_means() == {}
    log.close()
    (line,) = [json.loads(x) for x in (tmp_path / METRICS_NAME).read_text().splitlines()]
    assert line == {"iter": 2, "epoch": 0, "lr": 0.1, "loss_a": 2.0, "total": 2.0, "time": pytest.approx(1.0)}


def test_a_resumed_run_drops_the_lines_past_its_checkpoint(tmp_path: Path) -> None:
    lines = [json.dumps({"iter": i, "total": float(i)}) for i in range(1, 6)]
    (tmp_path / METRICS_NAME).write_text("\n".join(lines) + '\n{"iter": 6, "tot')  # the last line cut short
    log = MetricsLog(tmp_path, total_iters=10, start_iter=3, progress=False, tensorboard=False)
    log.update({"total": 9.0}, seconds=0.1, lr=0.1)
    log.write(4, 0, 0.1, log.window_means())
    log.close()
    assert [json.loads(x)["iter"] for x in (tmp_path / METRICS_NAME).read_text().splitlines()] == [1, 2, 3, 4]


def test_other_processes_write_nothing(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, total_iters=2, start_iter=0, main=False, progress=False)
    log.update({"total": 1.0}, seconds=0.1, lr=0.1)
    assert log.window_means() == {"total": 1.0, "time": 0.1}
    assert log.write(1, 0, 0.1, {"total": 1.0}) is None
    log.close()
    assert list(tmp_path.iterdir()) == []

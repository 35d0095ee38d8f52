"""The metrics log: means over the window, one JSON line each, the lines past the checkpoint dropped (by
an atomic rewrite) when a run resumes, and a full disk named."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from detector.training.metrics import METRICS_NAME, MetricsLog
from tests.full_disk import file_size_limit, needs_rlimit_fsize


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


def test_a_resume_replaces_the_file_instead_of_truncating_it_and_leaves_a_whole_one_alone(tmp_path: Path) -> None:
    path = tmp_path / METRICS_NAME
    path.write_text("".join(json.dumps({"iter": i}) + "\n" for i in range(1, 6)))
    inode = path.stat().st_ino
    MetricsLog(tmp_path, total_iters=10, start_iter=5, progress=False, tensorboard=False).close()
    assert path.stat().st_ino == inode  # nothing to drop: the file is not rewritten
    held = path.open()  # a reader of the old file, such as a crash mid-rewrite would leave, still sees it whole
    MetricsLog(tmp_path, total_iters=10, start_iter=2, progress=False, tensorboard=False).close()
    assert path.stat().st_ino != inode  # a new file put in place, not the old one cut
    assert [json.loads(x)["iter"] for x in path.read_text().splitlines()] == [1, 2]
    assert [json.loads(x)["iter"] for x in held.read().splitlines()] == [1, 2, 3, 4, 5]
    held.close()


@needs_rlimit_fsize
def test_a_full_disk_names_the_file_and_the_cut_line_is_dropped_on_resume(tmp_path: Path) -> None:
    path = tmp_path / METRICS_NAME
    log = MetricsLog(tmp_path, total_iters=10, start_iter=0, progress=False, tensorboard=False)
    log.write(1, 0, 0.1, {"total": 1.0})
    size = path.stat().st_size
    with file_size_limit(size + 10), pytest.raises(OSError) as raised:  # room for 10 bytes of the next line
        log.write(2, 0, 0.1, {"total": 2.0})
    log.close()
    assert raised.value.errno == errno.EFBIG and raised.value.filename == str(path)
    assert path.stat().st_size == size + 10  # the line cut short
    MetricsLog(tmp_path, total_iters=10, start_iter=1, progress=False, tensorboard=False).close()
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"iter": 1, "epoch": 0, "lr": 0.1, "total": 1.0}]

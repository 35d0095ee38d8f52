"""Files written whole or not at all: a write the kernel refuses (a file-size limit, as a full disk)
leaves the old file, no temporary file, and an OSError naming the target."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from torch import nn

from detector.atomic import atomic_write, atomic_write_bytes, atomic_write_text, remove_stale_temporaries
from detector.training.checkpoint import atomic_save
from detector.weights.loading import read_state_dict, save_weights
from tests.full_disk import file_size_limit, needs_rlimit_fsize

LIMIT = 64 * 1024  # bytes any one file may hold inside file_size_limit


def test_a_write_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    atomic_write_text(path, "old\n")
    atomic_write(path, lambda f: (f.write(b"new "), f.write(b"text\n")))
    assert path.read_text() == "new text\n"
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]
    assert path.stat().st_mode & 0o777 == 0o644


@needs_rlimit_fsize
def test_a_file_too_large_for_the_disk_leaves_the_old_file_and_names_the_target(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    atomic_write_text(path, "old\n")
    with file_size_limit(LIMIT), pytest.raises(OSError) as raised:
        atomic_write_bytes(path, b"x" * (4 * LIMIT))
    assert raised.value.errno == errno.EFBIG and raised.value.filename == str(path)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


@needs_rlimit_fsize
def test_a_checkpoint_torch_cannot_write_is_an_oserror_naming_it(tmp_path: Path) -> None:
    """torch.save turns the failed write into its own RuntimeError; the caller still gets the OSError."""
    path = tmp_path / "last.pth"
    atomic_save({"iteration": 1}, path)
    old = path.read_bytes()
    with file_size_limit(LIMIT), pytest.raises(OSError) as raised:
        atomic_save({"iteration": 2, "big": torch.zeros(LIMIT)}, path)
    assert raised.value.errno == errno.EFBIG and raised.value.filename == str(path)
    assert path.read_bytes() == old and torch.load(path, weights_only=True) == {"iteration": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


@needs_rlimit_fsize
def test_weights_that_do_not_fit_leave_the_old_weights(tmp_path: Path) -> None:
    path = tmp_path / "model_final.safetensors"
    save_weights(nn.Linear(2, 2), path)
    old = path.read_bytes()
    with file_size_limit(LIMIT), pytest.raises(OSError) as raised:
        save_weights(nn.Linear(200, 200), path)  # 160 kB of weights
    assert raised.value.errno == errno.EFBIG and raised.value.filename == str(path)
    assert path.read_bytes() == old and set(read_state_dict(path)) == {"weight", "bias"}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_an_error_of_the_writer_itself_is_raised_as_it_is(tmp_path: Path) -> None:
    def fail(f):
        f.write(b"half")
        raise KeyError("not a disk problem")

    with pytest.raises(KeyError):
        atomic_write(tmp_path / "a.json", fail)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_killed_writers_are_removed_and_nothing_else(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "last.pth", "whole")
    stale = [tmp_path / ".last.pth.a1b2c3.tmp", tmp_path / ".last.pth.zz9.tmp"]
    keep = [tmp_path / ".other.pth.a1b2c3.tmp", tmp_path / "last.pth.tmp", tmp_path / "metrics.jsonl"]
    for p in stale + keep:
        p.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path / "last.pth") == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.pth"] + [p.name for p in keep])
    assert (tmp_path / "last.pth").read_text() == "whole"

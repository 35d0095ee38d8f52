"""Atomic checkpoint files, random number generator states, and starting from other weights."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from detector import atomic
from detector.training import checkpoint
from detector.training.checkpoint import (atomic_save, capture_rng, load_checkpoint, load_pretrained, restore_rng,
                                          seed_everything)


def _draws() -> tuple[list[float], list[float], list[float]]:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_atomic_save_round_trips_with_weights_only(tmp_path: Path) -> None:
    state = {"model": {"w": torch.arange(4.0)}, "iteration": 7, "rng": [capture_rng()]}
    atomic_save(state, tmp_path / "last.pth")
    loaded = torch.load(tmp_path / "last.pth", weights_only=True)
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0)) and loaded["iteration"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def _fail_in_torch_save(monkeypatch) -> None:
    def partial_then_fail(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", partial_then_fail)


def _fail_in_fsync(monkeypatch) -> None:
    def fail(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", fail)


@pytest.mark.parametrize("fail", [_fail_in_torch_save, _fail_in_fsync])
def test_an_interrupted_write_leaves_the_old_checkpoint_and_no_partial_file(tmp_path: Path, monkeypatch, fail) -> None:
    path = tmp_path / "last.pth"
    atomic_save({"iteration": 1}, path)
    old = path.read_bytes()
    fail(monkeypatch)
    with pytest.raises((RuntimeError, OSError)):
        atomic_save({"iteration": 2, "big": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # the temporary file is gone
    assert path.read_bytes() == old
    assert torch.load(path, weights_only=True) == {"iteration": 1}


def test_an_interrupted_first_write_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    _fail_in_torch_save(monkeypatch)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"iteration": 1}, tmp_path / "last.pth")
    assert list(tmp_path.iterdir()) == []


def test_restored_rng_states_repeat_the_same_draws(tmp_path: Path) -> None:
    seed_everything(3)
    _draws()
    atomic_save({"rng": capture_rng()}, tmp_path / "rng.pth")  # through a weights_only file, as in a checkpoint
    expected = _draws()
    seed_everything(99)
    _draws()
    restore_rng(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    assert _draws() == expected


def test_rng_state_is_plain_data() -> None:
    state = capture_rng()
    assert isinstance(state["torch"], torch.Tensor)
    assert isinstance(state["python"], list) and isinstance(state["python"][1], list)
    assert isinstance(state["numpy"]["keys"], list) and all(isinstance(k, int) for k in state["numpy"]["keys"][:5])


def test_load_checkpoint_names_the_file_when_it_is_missing_corrupt_or_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nothing\.pth: no checkpoint"):
        load_checkpoint(tmp_path / "nothing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a zip")
    with pytest.raises(ValueError, match=r"garbage\.pth: not a readable checkpoint"):
        load_checkpoint(tmp_path / "garbage.pth")
    torch.save({"w": torch.zeros(1)}, tmp_path / "weights.pth")
    with pytest.raises(ValueError, match=r"weights\.pth: not a training checkpoint"):
        load_checkpoint(tmp_path / "weights.pth")


def test_load_checkpoint_refuses_pickled_code(tmp_path: Path) -> None:
    torch.save({"model": {}, "optimizer": {}, "iteration": 0, "sampler": [], "rng": [], "x": Path(".")},
               tmp_path / "unsafe.pth")
    with pytest.raises(ValueError, match="unsafe.pth"):
        load_checkpoint(tmp_path / "unsafe.pth")


def test_load_pretrained_keeps_fresh_layers_where_shapes_differ(tmp_path: Path) -> None:
    source = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))  # 3 classes
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    target = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 5))  # 5 classes
    fresh = target[1].weight.detach().clone()
    skipped = load_pretrained(target, tmp_path / "w.safetensors")
    assert skipped == ["1.bias", "1.weight"]
    assert torch.equal(target[0].weight, source[0].weight)
    assert torch.equal(target[1].weight, fresh)


def test_load_pretrained_still_refuses_other_keys(tmp_path: Path) -> None:
    save_file({"other.weight": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"w\.safetensors does not fit the model"):
        load_pretrained(nn.Linear(2, 2), tmp_path / "w.safetensors")

"""Fixtures: a tiny synthetic set (6 training images of 128 px) and a quick version of small_r18_fpn."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from detector.data.synthetic import SyntheticPaths, ensure_synthetic
from detector.modeling.presets import small_r18_fpn
from detector.modeling.rcnn import ModelConfig
from detector.training import TrainConfig


def quick_model_cfg() -> ModelConfig:
    """small_r18_fpn with 32 sampled RoIs per image instead of 128: the heads' convolutions dominate
    a CPU step, and the tests check the loop, not the recipe."""
    cfg = small_r18_fpn()
    return replace(cfg, box=replace(cfg.box, batch_size_per_image=32))


def quick_train_cfg(data: SyntheticPaths, out: Path, **changes) -> TrainConfig:
    """A few iterations at 128 px, every iteration logged, no progress bar."""
    base = TrainConfig(out_dir=out, train_images=data.train_images, train_ann=data.train_annotations, iters=4,
                       batch_size=2, min_sizes=(128,), max_size=213, log_every=1, progress=False, tensorboard=False)
    return replace(base, **changes)


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> SyntheticPaths:
    return ensure_synthetic(tmp_path_factory.mktemp("synthetic"), train=6, val=2, size=128, seed=0)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every training test with one intra-op thread (tests/conftest.py)."""

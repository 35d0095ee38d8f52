"""Training: the loop, its optimiser and schedule, checkpoints, the data it reads and what it reports.

``train(model_cfg, TrainConfig(...))`` is what ``python -m detector.train`` runs. The names below are
imported on first use, so that the command line answers ``--help`` without importing torch.
"""

from __future__ import annotations

import importlib

__all__ = ["TrainConfig", "TrainResult", "Trainer", "train"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("detector.training.loop"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

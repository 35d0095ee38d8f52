"""Reading weights files (safetensors, or torch files without unpickling code) into our models.

The names below are imported on first use, so that ``python -m detector.weights --help`` and the
catalogue need not import torch."""

from __future__ import annotations

import importlib

__all__ = ["load_weights", "read_state_dict", "save_weights"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("detector.weights.loading"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

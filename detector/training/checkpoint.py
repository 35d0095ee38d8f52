"""Training checkpoints: written atomically, read back without unpickling code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (``torch.load(weights_only=True)``
reads it): the model's and optimiser's state, the iteration, the data sampler's position and every random
number generator's state, so that resuming continues the very same run. Its "model" entry makes it a
weights file too (``detector.weights.read_state_dict`` looks there).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detector.atomic import atomic_write
from detector.weights.imagenet import trunk_shape
from detector.weights.loading import load_state_dict_strict, read_state_dict
from detector.weights.torchvision_keys import convert_torchvision_state_dict, is_torchvision_state_dict

CHECKPOINT_NAME = "last.pth"


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through ``detector.atomic.atomic_write``: a crash leaves either the old file or the
    new one, never half of one; a failed write (a full disk) raises OSError naming ``path`` and leaves no
    temporary file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by ``atomic_save``; ValueError naming the file when it is absent or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, or a pickle that weights_only refuses
        raise ValueError(f"{path}: not a readable checkpoint ({e.__class__.__name__}: {str(e).splitlines()[0]})") from e
    missing = {"model", "optimizer", "iteration", "sampler", "rng"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise ValueError(f"{path}: not a training checkpoint (lacks {', '.join(sorted(missing))})")
    return state


def capture_rng() -> dict:
    """The state of torch's (CPU and CUDA), numpy's global and python's generators as plain tensors and
    lists, which ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "python": [version, list(internal), gauss_next],
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_pretrained(model: nn.Module, path: str | Path) -> list[str]:
    """Start from a weights file (ours, torchvision's, or a checkpoint). Tensors whose shape differs from
    the model's, the class-specific layers when the model has other classes, keep the model's fresh
    initialisation; their names are returned. Any other mismatch is a ValueError naming the file."""
    state = read_state_dict(path)
    if is_torchvision_state_dict(state):
        state = convert_torchvision_state_dict(state)
    elif "conv1.weight" in state:  # no detection model: the tensors of a classifier, a ResNet's at the top
        raise ValueError(f"{path}: {trunk_shape(state, str(path)).describe()} (an ImageNet classifier), not a "
                         f"detection model: pass it as --backbone-weights")
    expected = model.state_dict()
    skipped = sorted(k for k in state if k in expected and state[k].shape != expected[k].shape)
    state.update({k: expected[k] for k in skipped})
    load_state_dict_strict(model, state, source=str(path))
    return skipped

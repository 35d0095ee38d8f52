"""Weights files in and out.

Reads safetensors (ours), memory-mapped, and torch files (torchvision's checkpoints) with
``torch.load(weights_only=True)``, which refuses any pickle that would run code. Keys must match the
model exactly: missing, unexpected or mis-shaped keys are an error that lists them.

``load_weights(..., assign=True)`` gives the model the file's tensors themselves rather than copying them
into its own (for a model built on the "meta" device: nothing allocated or initialised twice). A
safetensors file's tensors are then its mapped pages, copy-on-write: writing to them never changes the
file, but a file rewritten in place under a running process would change its weights, so
``save_weights`` writes a new file and renames it over the old one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from torchvision.ops import FrozenBatchNorm2d

from detector.atomic import atomic_write_bytes
from detector.modeling.backbone import set_frozen_bn_eps
from detector.weights.detectron2_keys import convert_detectron2_state_dict, is_detectron2_state_dict
from detector.weights.detectron2_pickle import read_detectron2_pickle
from detector.weights.torchvision_keys import convert_torchvision_state_dict, is_torchvision_state_dict

log = logging.getLogger(__name__)

# torchvision's v1 COCO checkpoints reproduce their published AP only with FrozenBatchNorm eps = 0
# (torchvision's model builders set it after loading them).
TORCHVISION_FROZEN_BN_EPS = 0.0


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file: safetensors, a torch file holding a state_dict (or a training
    checkpoint with one under "model"), or a Detectron2 ``.pkl`` of numpy arrays (read by a restricted
    unpickler: ``detector.weights.detectron2_pickle``). Raises ValueError naming the file when it cannot
    be read."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: weights file not found")
    if path.suffix == ".pkl":
        return read_detectron2_pickle(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable weights file ({e.__class__.__name__}: {str(e).splitlines()[0]})") from e
    except Exception as e:  # pickle.UnpicklingError and friends: an unsafe or corrupt pickle
        raise ValueError(f"{path}: refused to load ({e.__class__.__name__}: {str(e).splitlines()[0]})") from e
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: does not hold a state_dict of tensors")
    return obj


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata that ``save_weights`` stored in a safetensors file ({} for other files)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    if not path.is_file():
        raise ValueError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as e:  # worded as read_state_dict words it
        reason = f"{e.__class__.__name__}: {str(e).splitlines()[0]}"
        raise ValueError(f"{path}: not a readable weights file ({reason})") from e
    out = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def load_weights(model: nn.Module, path: str | Path, frozen_bn_eps: float | None = None, *,
                 assign: bool = False) -> None:
    """Load ``path`` into ``model`` strictly. Detectron2 checkpoints are renamed to our keys (background
    class moved first); torchvision checkpoints are renamed to our keys and, unless
    ``frozen_bn_eps`` says otherwise, get FrozenBatchNorm eps = 0 as torchvision gives them; our files
    carry their eps in their metadata (see ``save_weights``). ``assign``: the model takes the file's
    tensors (cast to its dtypes where they differ) instead of copying them into its own."""
    state = read_state_dict(path)
    if frozen_bn_eps is None:
        frozen_bn_eps = read_metadata(path).get("frozen_bn_eps")
    if is_torchvision_state_dict(state):
        state = convert_torchvision_state_dict(state)
        if frozen_bn_eps is None:
            frozen_bn_eps = TORCHVISION_FROZEN_BN_EPS
    elif is_detectron2_state_dict(state):  # its FrozenBN eps is the d2_* presets' own (1e-5)
        state = convert_detectron2_state_dict(state)
    load_state_dict_strict(model, state, source=str(path), assign=assign)
    if frozen_bn_eps is not None:
        set_frozen_bn_eps(model, frozen_bn_eps)


def load_state_dict_strict(model: nn.Module, state: dict[str, Tensor], source: str = "state_dict", *,
                           assign: bool = False) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = []
    for name, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", shapes)):
        if keys:
            problems.append(f"{len(keys)} {name}: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}")
    if problems:
        raise ValueError(f"{source} does not fit the model: " + "; ".join(problems))
    if assign:  # a copy only where the file's dtype is not the model's (a float16 file, say)
        state = {k: v if v.dtype == expected[k].dtype else v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=assign)


def frozen_bn_eps_of(model: nn.Module) -> float | None:
    return next((m.eps for m in model.modules() if isinstance(m, FrozenBatchNorm2d)), None)


def save_weights(model: nn.Module, path: str | Path, metadata: dict | None = None, half: bool = False) -> None:
    """Save as safetensors (nothing to unpickle on load); ``half`` stores floating tensors as float16.
    The model's FrozenBatchNorm eps goes into the metadata, so that loading restores it. Written
    atomically (``detector.atomic``: beside ``path``, then renamed over it, so a process that maps the old
    file keeps its weights); OSError naming ``path`` when it cannot be."""
    metadata = {"frozen_bn_eps": frozen_bn_eps_of(model), **(metadata or {})}
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        state[k] = v.half() if half and v.is_floating_point() else v
    data = safetensors_bytes(state, metadata={k: json.dumps(v) for k, v in metadata.items()})
    atomic_write_bytes(path, data)

"""Detectron2's ``.pkl`` weights files, read without running any code they might carry.

Detectron2's model zoo (``model_final_*.pkl``) and the Caffe2 ImageNet trunks it starts from (MSRA
``R-50.pkl``, ``R-101.pkl``; FAIR ``X-101-32x8d.pkl``) are pickles of plain dicts of numpy arrays, some
written by Python 2 (their byte strings decode as latin1), some by numpy < 2 (``numpy.core``) or >= 2
(``numpy._core``). A pickle names the functions that rebuild its objects, and ``pickle.load`` calls
whatever it names; so these files are read by an unpickler that resolves only the few names that
rebuild numpy arrays, dtypes and scalars (and an OrderedDict), and refuses every other one before
calling anything: ``ValueError`` naming the file and the refused name. Arrays of Python objects are
refused too. ``.pth`` files go through ``detector.weights.loading.read_state_dict`` instead
(``torch.load(weights_only=True)``).

The file's layout, as Detectron2's checkpointer reads it: ``{"model": {name: array}, "__author__": ...}``
(the zoo), ``{"blobs": {name: array}}`` (Detectron1 detection models) or ``{name: array}`` (ImageNet
trunks); Caffe2's ``*_momentum`` blobs are optimiser state and are dropped.
"""

from __future__ import annotations

import codecs
import collections
import importlib
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# numpy's pickles name these modules; numpy 2 moved numpy.core to numpy._core (the old name still loads).
_NUMPY_MODULES = {"numpy.core.multiarray": "multiarray", "numpy._core.multiarray": "multiarray",
                  "numpy.core.numeric": "numeric", "numpy._core.numeric": "numeric"}
_NUMPY_NAMES = {"multiarray": {"_reconstruct", "scalar"}, "numeric": {"_frombuffer"}}
_LATIN1 = {"latin1", "latin-1", "iso-8859-1"}


def _numpy_core(submodule: str):
    """numpy's own ``_core.<submodule>`` (numpy >= 2) or ``core.<submodule>``, without the deprecation shim."""
    for name in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(f"numpy has no {submodule} module")


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles of bytes use it (protocol 2: ``encode(str, "latin1")``)."""
    if encoding.lower() not in _LATIN1:
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} (only latin1 rebuilds bytes)")
    return codecs.encode(text, "latin1", errors)


class ArrayUnpickler(pickle.Unpickler):
    """Resolves numpy's array, dtype and scalar rebuilders, ``collections.OrderedDict`` and latin1
    ``_codecs.encode``; any other global is an ``UnpicklingError`` before it is called."""

    def find_class(self, module: str, name: str):
        if module in _NUMPY_MODULES and name in _NUMPY_NAMES[_NUMPY_MODULES[module]]:
            return getattr(_numpy_core(_NUMPY_MODULES[module]), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "numpy" and name in np.sctypeDict and isinstance(np.sctypeDict[name], type):
            return np.sctypeDict[name]  # numpy 2's dtype pickles name the scalar type, e.g. numpy.float32
        if module.startswith("numpy.dtypes") and name.endswith("DType"):
            return getattr(importlib.import_module("numpy.dtypes"), name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays and plain containers load")


def read_array_pickle(path: str | Path) -> object:
    """The object in ``path``, unpickled by ``ArrayUnpickler`` (Python 2 strings as latin1)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: weights file not found")
    try:
        with path.open("rb") as f:
            return ArrayUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable weights file ({e.__class__.__name__}: {e})") from e
    except Exception as e:  # UnpicklingError, and whatever a corrupt or hostile pickle makes numpy raise
        raise ValueError(f"{path}: refused to load ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def read_detectron2_pickle(path: str | Path) -> dict[str, Tensor]:
    """The named tensors of a Detectron2 / Caffe2 ``.pkl`` weights file, float arrays as float32 or as
    stored, in the file's own names (``detector.weights.detectron2_keys`` renames them)."""
    obj = read_array_pickle(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("blobs"), dict):
        obj = obj["blobs"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: does not hold a dict of named arrays")
    out = {}
    for name, value in obj.items():
        if not isinstance(name, str):
            raise ValueError(f"{path}: key {name!r} is not a name")
        if name.endswith("_momentum"):
            continue  # Caffe2's optimiser state
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
            raise ValueError(f"{path}: {name} is a {type(value).__name__}"
                             f"{'' if not isinstance(value, np.ndarray) else ' of ' + str(value.dtype)}, not a numeric array")
        out[name] = torch.from_numpy(np.ascontiguousarray(value))
    return out

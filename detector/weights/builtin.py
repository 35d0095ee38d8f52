"""The files that ship with the package: the repository's top-level ``weights/`` folder, with the built-in
models (``<preset>.safetensors`` and their JSON sidecars), ``catalogue.json`` (the published checkpoints)
and ``sample.png``.

The build maps that folder into the package as ``detector.builtin`` (pyproject.toml: ``package-dir``), so
a wheel carries it and ``importlib.resources`` finds it wherever the package is installed. A checkout,
installed in editable mode (whose finder does not map a data-only package) or not installed at all
(``PYTHONPATH=.``, the Docker image's /app), has the folder beside ``detector/`` and reads it there. Where
neither is, asking for a file raises a ValueError that says how to fix the installation: never a model
quietly left random.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

BUILTIN_PACKAGE = "detector.builtin"
_CHECKOUT_DIR = Path(__file__).resolve().parents[2] / "weights"  # <repo>/weights, for a checkout not installed


def builtin_file(name: str) -> Path:
    """The path of the shipped file ``name`` (it may not exist: a preset without built-in weights);
    ValueError when this installation has no built-in files at all."""
    try:
        return Path(importlib.resources.files(BUILTIN_PACKAGE) / name)
    except ModuleNotFoundError:  # not installed, or installed before the build mapped weights/ in
        if _CHECKOUT_DIR.is_dir():
            return _CHECKOUT_DIR / name
    package = Path(__file__).resolve().parents[1]
    raise ValueError(
        f"this installation of detector ({package}) has no built-in files ({name} among them): the package "
        f"data {BUILTIN_PACKAGE}, built from the repository's weights/ folder, is missing. Install the package "
        f"from the repository (pip install ., pip install -e .) or from a wheel built there"
    )


def builtin_weights(preset: str) -> Path | None:
    """The built-in weights of ``preset`` (``<preset>.safetensors``), or None when the project ships none for
    it; ValueError when this installation has no built-in files at all."""
    path = builtin_file(f"{preset}.safetensors")
    return path if path.is_file() else None

"""The published checkpoints the engine loads (weights/catalogue.json): download, cache, verify.

A file is used only after its SHA-256 matches the catalogue. torchvision publishes the first 8 hex
digits of each file's SHA-256 in its name (and checks only those); an entry may carry the full
``sha256`` too, and then all of it must match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from detector.weights.builtin import builtin_file

log = logging.getLogger(__name__)

CATALOGUE_NAME = "catalogue.json"  # one of the built-in files (detector.weights.builtin)


@dataclass(frozen=True)
class Entry:
    name: str
    preset: str
    url: str
    file_name: str
    sha256_prefix: str
    license: str
    coco_val2017: dict = field(default_factory=dict)
    frozen_bn_eps: float | None = None
    sha256: str | None = None


def load_catalogue(path: Path | None = None) -> dict[str, Entry]:
    """The entries of ``path``, by default the catalogue that ships with the package."""
    path = path if path is not None else builtin_file(CATALOGUE_NAME)
    return {name: Entry(name=name, **fields) for name, fields in json.loads(path.read_text()).items()}


def cache_dir() -> Path:
    """$DETECTOR_CACHE, else ~/.cache/detector."""
    return Path(os.environ.get("DETECTOR_CACHE", Path.home() / ".cache" / "detector"))


def sha256_of(path: str | Path) -> str:
    """The hex SHA-256 of a file, read 1 MiB at a time (the weights can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, entry: Entry) -> str:
    """The file's SHA-256 if it matches ``entry``; ValueError naming the file otherwise."""
    digest = sha256_of(path)
    expected = entry.sha256 or entry.sha256_prefix
    if not digest.startswith(expected):
        raise ValueError(f"{path}: SHA-256 {digest} does not match the catalogue's {expected} for {entry.name}")
    return digest


def download(entry: Entry, directory: Path | None = None) -> Path:
    """The verified file of ``entry`` in the cache, downloading it (with progress) when absent."""
    directory = directory or cache_dir()
    target = directory / entry.file_name
    if target.is_file():
        verify(target, entry)
        return target
    directory.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(entry.url, timeout=30) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=entry.file_name, disable=None) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        partial.unlink(missing_ok=True)
        raise ValueError(f"cannot download {entry.name} from {entry.url} (offline?): {e}") from e
    try:
        verify(partial, entry)
    except ValueError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    return target


def verify_if_catalogued(path: Path) -> None:
    """Refuse, before reading it, a file named as a catalogue entry whose SHA-256 does not match."""
    for entry in load_catalogue().values():
        if entry.file_name == path.name:
            verify(path, entry)

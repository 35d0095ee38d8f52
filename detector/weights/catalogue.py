"""The published checkpoints the engine loads (weights/catalogue.json): download, cache, verify.

A file is known by its bytes, never by its name. torchvision publishes the first 8 hex digits of each
file's SHA-256 (in its name, and checks only those); an entry may carry the full ``sha256`` too. The
first download that matches the catalogue records the file's full SHA-256 beside it, in
``<file name>.sha256`` (sha256sum's format: ``sha256sum -c`` reads it), and from then on all of it must
match. A file that claims an entry, by its name or by its hash starting as the entry's, is checked
against the entry (full catalogue hash, else the recorded one found beside the file or in the cache,
else the prefix) and refused when it does not match; so a renamed catalogued file is still checked,
and a file under a catalogued name is never trusted for its name.

Detectron2 publishes no SHA-256, only the first hex digits of each file's MD5 (in its name: "model_final_
f10217.pkl"); its entries have an empty ``sha256_prefix`` and an ``md5_prefix``, which a file must match
as well as the SHA-256 recorded at its first verified download. They are claimed by their name only.
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

from detector.atomic import atomic_write_text
from detector.weights.builtin import builtin_file

log = logging.getLogger(__name__)

CATALOGUE_NAME = "catalogue.json"  # one of the built-in files (detector.weights.builtin)


@dataclass(frozen=True)
class Entry:
    """A published file: a detection model of ``preset``, or an ImageNet classifier whose ``trunk`` (a
    torchvision arch name) a preset trains from (``detector.weights.imagenet``)."""

    name: str
    url: str
    file_name: str
    sha256_prefix: str
    license: str
    preset: str | None = None
    trunk: str | None = None
    coco_val2017: dict = field(default_factory=dict)
    imagenet_1k: dict = field(default_factory=dict)  # torchvision's published accuracy of the classifier
    frozen_bn_eps: float | None = None
    sha256: str | None = None
    md5_prefix: str | None = None  # Detectron2's model zoo: the MD5 prefix in its file names
    model_id: int | None = None  # Detectron2's model zoo: the model id of MODEL_ZOO.md


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


def _md5_of(path: str | Path) -> str:
    """The hex MD5 of a file (Detectron2 names its files by it), read 1 MiB at a time."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


RECORD_SUFFIX = ".sha256"


def record_path(directory: Path, entry: Entry) -> Path:
    return directory / (entry.file_name + RECORD_SUFFIX)


def read_record(path: Path) -> str | None:
    """The full SHA-256 in a record file (None when there is none); ValueError when it is not one."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable SHA-256 record ({e.__class__.__name__})") from e
    digest = text.split(maxsplit=1)[0].lower() if text.strip() else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{path}: not a SHA-256 record (expected 64 hex digits, then the file name)")
    return digest


def write_record(directory: Path, entry: Entry, digest: str) -> Path:
    """Record ``digest`` as the full SHA-256 of ``entry``'s file in ``directory`` (atomically)."""
    path = record_path(directory, entry)
    atomic_write_text(path, f"{digest}  {entry.file_name}\n")
    return path


def expectations(entry: Entry, directories: tuple[Path, ...]) -> list[tuple[str, str]]:
    """What a file of ``entry`` must hash to, each with where it comes from: the catalogue's full hash and
    every record of it in ``directories``, or the catalogue's prefix when neither exists. A record
    that disagrees with the catalogue is a ValueError: it cannot vouch for anything."""
    prefix = entry.sha256_prefix.lower()
    found = [(entry.sha256.lower(), "the catalogue's SHA-256")] if entry.sha256 else []
    for directory in dict.fromkeys(directories):  # in order, each once
        record = record_path(directory, entry)
        recorded = read_record(record)
        if recorded is None:
            continue
        if not recorded.startswith(found[0][0] if found else prefix):
            raise ValueError(f"{record}: records {recorded} for {entry.name}, which the catalogue's "
                             f"{found[0][0] if found else prefix + '...'} contradicts; delete it and download again")
        found.append((recorded, f"the SHA-256 recorded in {record} at its first verified download"))
    return found or [(prefix, "the catalogue's SHA-256 prefix")]


def verify(path: Path, entry: Entry, digest: str | None = None, directories: tuple[Path, ...] | None = None) -> str:
    """The file's SHA-256 if it matches ``entry``; ValueError naming the file otherwise. The expected
    hashes are looked up beside the file and in the cache unless ``directories`` says where."""
    digest = digest or sha256_of(path)
    directories = directories if directories is not None else (Path(path).parent, cache_dir())
    if entry.md5_prefix and not _md5_of(path).startswith(entry.md5_prefix.lower()):
        raise ValueError(f"{path}: MD5 does not start with {entry.md5_prefix}, the catalogue's for entry {entry.name} "
                         f"(as its publisher names it); refusing to use it")
    for expected, source in expectations(entry, directories):
        if not digest.startswith(expected):  # a full hash or a prefix
            raise ValueError(f"{path}: SHA-256 {digest} does not match {source} for catalogue entry {entry.name} "
                             f"({expected}{'...' if len(expected) < 64 else ''}); refusing to use it")
    return digest


def claimed_entries(path: Path, digest: str, catalogue: dict[str, Entry]) -> list[Entry]:
    """The entries a file claims to be: by its name, or by its hash starting as theirs."""
    return [e for e in catalogue.values()
            if e.file_name == path.name or ((e.sha256 or e.sha256_prefix) and digest.startswith((e.sha256 or e.sha256_prefix).lower()))]


def download(entry: Entry, directory: Path | None = None) -> Path:
    """The verified file of ``entry`` in the cache, downloading it (with progress) when absent. The first
    time a file is verified there, its full SHA-256 is recorded beside it; later loads check all of it."""
    directory = directory or cache_dir()
    target = directory / entry.file_name
    if target.is_file():
        _record_once(directory, entry, verify(target, entry, directories=(directory,)))
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
            out.flush()
            os.fsync(out.fileno())
    except (urllib.error.URLError, OSError) as e:
        partial.unlink(missing_ok=True)
        raise ValueError(f"cannot download {entry.name} from {entry.url} (offline?): {e}") from e
    try:
        digest = verify(partial, entry, directories=(directory,))
    except ValueError:
        partial.unlink(missing_ok=True)
        raise
    _record_once(directory, entry, digest)
    os.replace(partial, target)
    return target


def resolve_catalogued(spec: str | Path, *, trunk: bool) -> tuple[Path, Entry | None]:
    """What ``--weights`` (``trunk`` False) or ``--backbone-weights`` (``trunk`` True) names: (an existing
    path, None) — left for its reader to check, which hashes it once —, or for the name of a catalogue entry
    of that kind its verified file in the cache, downloaded when absent, and the entry. ValueError for a
    name of the other kind (saying where it belongs), or for neither a file nor a name."""
    path = Path(spec)
    if path.exists():
        return path, None
    catalogue = load_catalogue()
    entry = catalogue.get(str(spec))
    if entry is None:
        kind = "ImageNet trunks" if trunk else "detection models"
        names = ", ".join(name for name, e in catalogue.items() if (e.trunk is not None) == trunk)
        raise ValueError(f"{spec}: weights file not found, nor a catalogue name (its {kind}: {names})")
    if trunk and entry.trunk is None:
        raise ValueError(f"{spec}: a detection model of the catalogue, not an ImageNet trunk: pass it as --weights")
    if not trunk and entry.trunk is not None:
        raise ValueError(f"{spec}: an ImageNet trunk of the catalogue, not a detection model: pass it to "
                         "python -m detector.train --backbone-weights")
    return download(entry), entry


def _record_once(directory: Path, entry: Entry, digest: str) -> None:
    """Write the record of a file just verified, unless the catalogue or a record holds all of its hash."""
    if entry.sha256 is None and read_record(record_path(directory, entry)) is None:  # no full hash known there
        path = write_record(directory, entry, digest)
        log.info("%s: recorded the full SHA-256 of %s (%s)", path, entry.name, digest)


def verify_if_catalogued(path: Path, digest: str | None = None) -> Entry | None:
    """Refuse, before anything parses it, a file that claims a catalogue entry (by its name, or by its
    SHA-256 starting as the entry's) and does not match it; the entry it matches, or None for a file the
    catalogue does not know (or a path that is not a file: the loader says so). ``digest``: the file's
    SHA-256 where the caller has it already."""
    if not Path(path).is_file():
        return None
    digest = digest or sha256_of(path)
    claimed = claimed_entries(path, digest, load_catalogue())
    for entry in claimed:
        verify(path, entry, digest)
    if claimed:
        log.info("%s: SHA-256 %s, catalogue entry %s", path, digest, claimed[0].name)
    return claimed[0] if claimed else None

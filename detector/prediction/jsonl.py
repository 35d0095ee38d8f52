"""The record of a batch job: a JSON Lines file, one object per image, appended and flushed one line at
a time, so that a killed run keeps every line it wrote but the one it was writing.

A line is either a result, ``{"file": ..., ...}``, or a failure, ``{"file": ..., "error": "..."}``.

Reading tolerates what a kill -9 leaves: a last line without its newline (or any line that is not a JSON
object with a "file") is torn and not counted. ``open_for_resume`` repairs a record before it appends to it:
torn lines and failures go (failures are retried by the resumed run: a file may have been unreadable
for a while, as on a network share), results stay. Dropping only a torn tail truncates the file in
place; dropping anything else rewrites it whole with ``atomic_write``, so a kill during the repair leaves
the old record or the new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from detector.atomic import atomic_write


@dataclass
class Record:
    """What a record file holds: the files with a result, those with a failure line, the torn lines."""

    ok: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    torn: int = 0


def entries(path: str | Path) -> Iterator[tuple[int, dict | None]]:
    """(byte offset of the line, its object, or None when the line is torn), for each line of ``path``."""
    offset = 0
    with Path(path).open("rb") as f:
        for raw in f:
            yield offset, _parse(raw)
            offset += len(raw)


def read_record(path: str | Path) -> Record:
    """The record of ``path``; an empty one when there is no such file."""
    record = Record()
    if not Path(path).is_file():
        return record
    for _, entry in entries(path):
        if entry is None:
            record.torn += 1
        elif "error" in entry:
            record.failed.add(entry["file"])
        else:
            record.ok.add(entry["file"])
    return record


class LineWriter:
    """Appends one JSON object per line to a file, each flushed to the OS as it is written (it survives
    the process being killed; ``fsync`` on ``close`` for a machine that stops)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f: TextIO = self.path.open("a", encoding="utf-8")

    def write(self, entry: dict) -> None:
        self._f.write(json.dumps(entry, separators=(",", ":")) + "\n")  # one write: no line split across two
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> LineWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_for_resume(path: str | Path) -> tuple[LineWriter, Record]:
    """A writer that appends to ``path`` after repairing it (see the module's docstring), and the record
    of the results it keeps (``failed`` then lists the failures it dropped, to be retried)."""
    path = Path(path)
    record = read_record(path)
    if record.failed or record.torn:
        _repair(path, record)
    return LineWriter(path), record


def _repair(path: Path, record: Record) -> None:
    lines = list(entries(path))
    keep = [entry is not None and "error" not in entry for _, entry in lines]
    first_dropped = keep.index(False)
    if all(entry is None for _, entry in lines[first_dropped:]):
        os.truncate(path, lines[first_dropped][0])  # only a torn tail: cut it off
        return

    def write(f) -> None:
        with path.open("rb") as src:
            for raw, kept in zip(src, keep):
                if kept:
                    f.write(raw)

    atomic_write(path, write)


def _parse(raw: bytes) -> dict | None:
    if not raw.endswith(b"\n"):
        return None
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("file"), str) else None

"""Where a batch job keeps its record, how the records of several processes become one output, and how
a resumed run knows what is done.

Records. One process writing ``--out X.jsonl`` appends to X.jsonl itself. Otherwise (torchrun's ranks,
or a ``.json`` output, which is one document written at the end) rank r appends to its part file
``X.rank{r}.jsonl`` beside ``--out``, and the parts are merged into ``--out`` at the end.

Merging (``merge``, by rank 0 once every rank is done, or by ``python -m detector.predict merge``):
the lines of X.jsonl when it exists (an earlier merge) and of every part, one line per file: a result
beats a failure, and a later line one of the same kind. ``--out``, written whole with ``atomic_write``:
- X.jsonl: those lines; the parts are then deleted (X.jsonl holds all they held).
- X.json, lines of ``{"file", ...}``: a JSON list of them, failures included, as predict always wrote it.
- X.json, COCO lines (``{"file", "image_id", "results"}``): a JSON list of every line's results, failures
  left out. The parts stay beside a .json output: they are what a rerun resumes from.

Resuming: a file is done when any of these records holds a result for it, so a rerun with another
number of processes skips it too. The merge holds one small entry per file in memory, never the lines.
"""

from __future__ import annotations

import glob
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from detector.atomic import atomic_write
from detector.prediction.jsonl import entries, read_record

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".jsonl", ".json")


@dataclass
class Merged:
    images: int  # files with a result
    failed: int  # files with only failures


def check_output(out: Path) -> None:
    if out.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"{out}: the output must end in .jsonl (a line per image) or .json (one document)")


def part_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.stem}.rank{rank}.jsonl")


def record_path(out: Path, rank: int, world_size: int) -> Path:
    """The file that this process appends its lines to (see the module's docstring)."""
    return out if world_size == 1 and out.suffix == ".jsonl" else part_path(out, rank)


def part_pattern(out: Path) -> Path:
    return out.with_name(f"{out.stem}.rank*.jsonl")


def part_paths(out: Path) -> list[Path]:
    """The part files beside ``out``, by rank."""
    pattern = re.compile(re.escape(out.stem) + r"\.rank(\d+)\.jsonl")
    ranks = {int(m.group(1)): p for p in out.parent.glob(glob.escape(out.stem) + ".rank*.jsonl")
             if (m := pattern.fullmatch(p.name))}
    return [ranks[r] for r in sorted(ranks)]


def records(out: Path) -> list[Path]:
    """Every file that holds lines of the job writing ``out``, in merge order."""
    return ([out] if out.suffix == ".jsonl" and out.is_file() else []) + part_paths(out)


def done_files(out: Path) -> set[str]:
    """The files that some record of ``out``'s job holds a result for."""
    return set().union(*(read_record(path).ok for path in records(out)))


def merge(out: Path) -> Merged:
    """Merge the records of ``out``'s job into ``out`` (see the module's docstring)."""
    sources = records(out)
    if not sources:
        raise ValueError(f"{out}: nothing to merge (no {part_pattern(out).name} beside it)")
    winners: dict[str, tuple[int, int, bool]] = {}  # file -> (source, offset of its line, a result?)
    kinds = set()  # "coco" and/or "detector" lines
    for s, path in enumerate(sources):
        for offset, entry in entries(path):
            if entry is None:
                continue
            ok = "error" not in entry
            if ok:
                kinds.add("coco" if "results" in entry else "detector")
            if ok or not winners.get(entry["file"], (0, 0, False))[2]:
                winners[entry["file"]] = (s, offset, ok)
    if len(kinds) > 1:
        raise ValueError(f"{out}: its records mix COCO lines and detector lines (runs with two --format)")
    kept = {(s, offset) for s, offset, _ in winners.values()}
    lines = (entry for s, path in enumerate(sources) for offset, entry in entries(path) if (s, offset) in kept)
    atomic_write(out, lambda f: _write(f, lines, out.suffix == ".jsonl", coco=kinds == {"coco"}))
    merged = Merged(images=sum(ok for *_, ok in winners.values()), failed=sum(not ok for *_, ok in winners.values()))
    if out.suffix == ".jsonl":
        for part in part_paths(out):
            part.unlink()
    logger.info("merged %d records into %s: %d images, %d failed", len(sources), out, merged.images, merged.failed)
    return merged


def _write(f, lines, as_lines: bool, *, coco: bool) -> None:
    if as_lines:
        for entry in lines:
            f.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        return
    f.write(b"[")
    first = True
    for entry in lines:
        items = entry.get("results", []) if coco else [entry]  # a COCO failure: nothing
        for item in items:
            f.write((b"" if first else b",\n") + json.dumps(item, separators=(",", ":")).encode())
            first = False
    f.write(b"]\n")

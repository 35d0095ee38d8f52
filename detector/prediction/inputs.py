"""What a batch job predicts: files, folders and glob patterns, in any mix, and ``--file-list`` files,
turned into one list of image paths in a deterministic order (the same command gives the same list,
which sharding by rank and resuming rely on).

- A file is taken whatever its extension: its reader says if it is no image.
- A folder is searched recursively for files with an image extension (``IMAGE_EXTENSIONS``, any case),
  sorted by path; a folder without one is an error.
- A pattern (``*``, ``?``, ``[``) is expanded as the shell would, ``**`` across folders, sorted; a folder
  it matches is searched as above; a pattern that matches nothing is an error.
- A file list holds one path per line, as written (relative to the current folder); blank lines and
  lines starting with ``#`` are skipped. Listed paths are not looked at here: one that is missing is
  a bad file of the run, as an unreadable one is.

Arguments keep their order; each path appears once, where it is first named. Errors are ValueErrors that
name the argument. Nothing here imports torch: the CLI checks its inputs before it loads the model.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

# Extensions that Pillow reads and cameras, scanners and data sets write.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
_GLOB_CHARS = frozenset("*?[")


def expand_inputs(arguments: Sequence[str | Path], file_lists: Sequence[str | Path] = ()) -> list[Path]:
    """The image paths that ``arguments`` (files, folders, patterns) and ``file_lists`` name, each once."""
    paths: list[Path] = []
    for argument in arguments:
        paths += _expand(str(argument))
    for file_list in file_lists:
        paths += read_file_list(file_list)
    if not paths:
        raise ValueError("no images given: name files, folders or patterns, or a --file-list")
    return list(dict.fromkeys(paths))  # the first place of each path, in order


def read_file_list(path: str | Path) -> list[Path]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file list") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable file list ({e})") from None
    return [Path(s) for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def images_in_folder(folder: Path) -> list[Path]:
    """The files with an image extension under ``folder`` (recursively, links to folders not followed),
    sorted by path."""
    found = []
    for top, dirs, files in os.walk(folder):
        dirs.sort()
        found += [Path(top) / name for name in files if name.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _expand(argument: str) -> list[Path]:
    path = Path(argument)
    if path.is_file():
        return [path]
    if path.is_dir():
        return _folder(path, argument)
    if _GLOB_CHARS & set(argument):
        matches = sorted(glob.glob(argument, recursive=True))
        if not matches:
            raise ValueError(f"{argument}: no file matches this pattern")
        return [p for m in matches for p in (_folder(Path(m), m) if Path(m).is_dir() else [Path(m)])]
    raise ValueError(f"{argument}: no such file or folder")


def _folder(folder: Path, argument: str) -> list[Path]:
    found = images_in_folder(folder)
    if not found:
        raise ValueError(f"{argument}: no images in this folder (looked for {' '.join(IMAGE_EXTENSIONS)})")
    return found

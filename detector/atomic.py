"""Files written whole or not at all.

``atomic_write`` writes into a temporary file in the target's folder, fsyncs it, renames it over the
target (``os.replace``) and fsyncs the folder: a crash (kill -9, power loss) leaves the old file or the
new one, never half of one. A write that fails (a full disk, a file-size limit) removes the temporary
file, leaves the old target as it was, and raises ``OSError`` with the target as its ``filename``, so
that a CLI can say ``error: <target>: No space left on device``.

A killed process runs no ``except``: its temporary file (``.NAME.*.tmp``) stays, and
``remove_stale_temporaries`` deletes such files when nothing else writes NAME.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then put it in place of ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    raw = os.fdopen(fd, "wb")
    out = _ErrorKeepingFile(raw)
    try:
        try:
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the file private to this user
            write(out)
            raw.flush()
            os.fsync(raw.fileno())
        finally:
            raw.close()
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        # torch.save and others turn the OSError of a write into their own exception: raise the OSError.
        error = out.error or (e if isinstance(e, OSError) else None)
        if error is not None and not isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise OSError(error.errno, error.strerror or str(error), str(path)) from e
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files ``atomic_write`` leaves beside ``path`` when its process is killed
    mid-write. Only for a moment when nothing else writes ``path``, as at the start of a training run.
    Returns what was deleted."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


class _ErrorKeepingFile:
    """A binary file that remembers the first OSError its writes raised (then raises it as usual)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):  # tell, seek, fileno ... as the file has them
        return getattr(self._f, name)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""A real out-of-space condition for tests: RLIMIT_FSIZE caps the size any file may grow to, and with
SIGXFSZ ignored a write past it fails with EFBIG ("File too large"), as a full disk fails with ENOSPC.
The kernel refuses the write; nothing is mocked.

``file_size_limit`` holds the limit in this process (the test's own thread does the writing);
``limit_file_size`` is a ``preexec_fn`` that sets it in a child process before it runs.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import sys
from collections.abc import Callable, Iterator

import pytest

needs_rlimit_fsize = pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE") or sys.platform == "win32",
                                        reason="RLIMIT_FSIZE and SIGXFSZ are POSIX")


@contextlib.contextmanager
def file_size_limit(max_bytes: int) -> Iterator[None]:
    """No file of this process grows past ``max_bytes`` inside the block (writes past it: EFBIG)."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def limit_file_size(max_bytes: int) -> Callable[[], None]:
    """For ``subprocess.run(..., preexec_fn=...)``: the child's files stop at ``max_bytes`` (EFBIG);
    an ignored signal stays ignored across exec."""

    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return preexec

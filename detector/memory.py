"""Keep freed memory in the process, for the next forward pass (glibc's malloc, CPU inference).

By default glibc hands big freed blocks back to the kernel (those it got with mmap, and the top of its
heap past 128 KiB), so the next forward pass's tensors fault fresh, zero-filled pages in again: hundreds
of thousands of page faults per R50 forward pass at COCO sizes, a large share of its CPU time.
``keep_freed_memory()`` makes malloc serve every block from its heap and keep what is freed there:
the same numbers, less time, a resident size that stays at the peak of one forward pass instead of
dropping between them (figures: bench/engine.py, bench/results/, README "Speed").

It is process-wide and cannot be undone (as jemalloc or tcmalloc would be, which PyTorch's CPU tuning
guide recommends for the same reason), so no library object applies it: the entry points do, on the
CPU, each behind a flag (``python -m detector.predict`` and ``python -m detector.eval``:
``--keep-freed-memory/--no-keep-freed-memory``; the service: ``DETECTOR_KEEP_FREED_MEMORY``). A library
user who wants it calls ``keep_freed_memory()`` once, before the first forward pass. No-op where malloc
is not glibc's.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_THRESHOLD = 2**31 - 1  # bytes free at the heap's top before malloc gives them back: never, in practice

_applied: bool | None = None

# What the entry points' flag (predict, eval) and setting (the service) say of it.
FLAG_HELP = ("on the CPU, keep freed tensor memory in the process for the next forward pass instead of "
             "giving it back to the kernel: no page faults, faster forwards; the process stays at the size "
             "of its largest pass (detector/memory.py; README \"Speed\")")


def keep_freed_memory() -> bool:
    """Serve every block from malloc's heap (no mmap per big tensor) and never trim the heap. True once
    applied (later calls do nothing), False where the C library is not glibc."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def keep_freed_memory_for(device: str) -> bool:
    """``keep_freed_memory()`` when ``device`` ("cpu", "cuda:1", ...) is the CPU, whose tensors are
    malloc's; False, and nothing changed, for any other device."""
    return device.split(":")[0] == "cpu" and keep_freed_memory()


def _apply() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: their own allocator
            return False
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
    if not ok:
        log.warning("glibc's mallopt refused a setting: freed memory may still go back to the kernel")
    return ok

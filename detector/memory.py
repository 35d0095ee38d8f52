"""Keep freed memory in the process, for the next forward pass (glibc's malloc, CPU inference).

By default glibc hands big freed blocks back to the kernel (those it got with mmap, and the top of its
heap past 128 KiB), so the next forward pass's tensors fault fresh, zero-filled pages in again: for our
Mask R-CNN R50-FPN at 800x1216 on these CPUs that is ~500,000 page faults and ~1.4 s of kernel time per
image, a fifth of the CPU time (torchvision's model: 650,000-900,000 and 2.5-3.6 s).
``keep_freed_memory()`` makes malloc serve every block from its heap and keep what is freed there:
the same numbers, ~20% less time, a resident size that stays at the peak of one forward pass instead
of dropping between them (bench/engine.py; README "Speed").

It is process-wide (as jemalloc or tcmalloc would be, which PyTorch's CPU tuning guide recommends for
the same reason), so ``Predictor`` applies it on the CPU unless told not to. No-op where malloc is not
glibc's.
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


def keep_freed_memory() -> bool:
    """Serve every block from malloc's heap (no mmap per big tensor) and never trim the heap. True once
    applied (later calls do nothing), False where the C library is not glibc."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


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

"""Run code in a fresh Python process and report what it left of the process-wide state that only the
entry points may change: glibc malloc's settings (``detector.memory``) and Pillow's pixel limit.

malloc is observed, not asked: after ``mallopt(M_MMAP_MAX, 0)`` a 64 MiB block comes from the heap, so
glibc's count of mmapped blocks (``mallinfo2().hblks``) does not grow; under the default settings it does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (mallinfo2)")

_REPORT = """
import ctypes, json, sys
from detector import memory
from PIL import Image

class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.argtypes, libc.malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
libc.free.argtypes, libc.free.restype = [ctypes.c_void_p], None
libc.mallinfo2.restype = _MallInfo2
before = libc.mallinfo2().hblks
block = libc.malloc(64 << 20)
mmapped = libc.mallinfo2().hblks > before
libc.free(block)
print("\\nSTATE " + json.dumps({"memory_applied": memory._applied, "big_block_mmapped": mmapped,
                               "max_image_pixels": Image.MAX_IMAGE_PIXELS,
                               "modules": sorted(m for m in sys.modules if "." not in m)}))
"""


def state_after(code: str, timeout: float = 300) -> dict:
    """Run ``code`` in a fresh interpreter at the repository root, then report: {"memory_applied": what
    ``detector.memory`` says, "big_block_mmapped": whether malloc still serves a 64 MiB block by mmap,
    "max_image_pixels": Pillow's limit, "modules": the top-level modules imported}."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code + "\n" + _REPORT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in reversed(out.stdout.splitlines()) if line.startswith("STATE "))
    return json.loads(line.removeprefix("STATE "))

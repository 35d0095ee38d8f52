"""detector/memory.py: after keep_freed_memory(), a tensor freed and allocated again costs no page faults;
only the entry points apply it: building or running a Predictor leaves malloc as it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from detector import memory
from tests.process_state import glibc_only, state_after

ROOT = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# Allocate, fill and free a 64 MiB tensor (above glibc's largest mmap threshold, 32 MiB) five times, after
# 16 warm-up cycles, and print the minor page faults of those five. (Kept memory needs a few cycles to
# settle: an aligned block does not fit the hole its predecessor left until holes have merged.)
_CYCLES = """
import resource, sys
import torch
from detector import memory
if sys.argv[1] == "keep":
    assert memory.keep_freed_memory()
def cycle():
    t = torch.empty(16 << 20, dtype=torch.float32)
    t.fill_(1.0)
    del t
for _ in range(16):
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _CYCLES, mode], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


@linux_only
def test_kept_memory_is_reused_without_page_faults():
    pages = (64 << 20) // 4096  # 16384 pages per 64 MiB tensor
    assert _page_faults("default") >= 5 * pages * 0.9  # each cycle faults the whole tensor in again
    assert _page_faults("keep") < pages // 10  # the freed block is served again from malloc's heap


def test_keep_freed_memory_is_applied_once_and_says_so(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(memory, "_apply", lambda: calls.append(1) or True)
    assert memory.keep_freed_memory() is True and memory.keep_freed_memory() is True
    assert calls == [1]


@glibc_only
def test_the_probe_sees_the_setting():
    """The observation the tests below rely on can fail: applied, big blocks stop being mmapped."""
    assert state_after("")["big_block_mmapped"] is True
    state = state_after("from detector import memory; memory.keep_freed_memory()")
    assert (state["memory_applied"], state["big_block_mmapped"]) == (True, False)


@glibc_only
def test_a_predictor_leaves_malloc_as_it_was():
    state = state_after(
        "import numpy as np\n"
        "from detector.predictor import Predictor\n"
        "p = Predictor.from_preset('small_r18_fpn', device='cpu')\n"
        "p.predict([np.zeros((64, 96, 3), np.uint8)])\n"
    )
    assert (state["memory_applied"], state["big_block_mmapped"]) == (None, True)


def test_only_the_cpu_is_given_the_setting(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or True)
    assert memory.keep_freed_memory_for("cuda:1") is False and calls == []
    assert memory.keep_freed_memory_for("cpu") is True and calls == [1]


@linux_only
def test_glibc_takes_the_settings():
    assert memory._apply() is True  # the CI and service machines run glibc: a refusal here is a regression

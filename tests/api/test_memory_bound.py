"""The service's peak memory under 8 concurrent 40 MP requests of mixed kinds (16-bit grey, alpha, palette,
polygons, renders), with its defaults and the built-in model: a real ``python -m api``, its VmHWM read
from /proc. Slow (minutes): ``make test-slow``. The same burst, per kind: ``python bench/memory.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.memory import GIB, MIX, bodies, burst

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc (Linux)")
def test_eight_40_mp_requests_of_mixed_kinds_peak_under_3_gib(tmp_path):
    images = bodies(40_000_000, tmp_path)
    run = burst(ROOT, list(MIX), images, tmp_path / "server.log", kill_above_bytes=6 * GIB)  # a shared machine's guard
    log = (tmp_path / "server.log").read_text()
    assert run["statuses"] == [200] * len(MIX), (run, log[-3000:])
    assert not run["killed_above_limit"] and run["peak_mib"] < 3 * 1024, run

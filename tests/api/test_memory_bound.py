"""The service's peak memory under 8 concurrent 40 MP requests of mixed kinds (16-bit grey, alpha, palette,
polygons, renders), with its defaults and the built-in model: a real ``python -m api``, its VmHWM read
from /proc. Slow (minutes): ``make test-slow``. The same burst, per kind: ``python bench/memory.py``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.memory import GIB, MIX, bodies, burst

ROOT = Path(__file__).resolve().parents[2]


class PeakAboveBudget(AssertionError):
    """The one failure the xfail below expects: any other (an answer that is not 200) fails the test."""


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    raises=PeakAboveBudget,
    reason="not yet within budget on every run (README, 'Bounded memory'; bench/results/memory_*.json): the peak "
    "straddles 3 GiB, so the marker is not strict; any answer that is not 200 still fails",
)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc (Linux)")
def test_eight_40_mp_requests_of_mixed_kinds_peak_under_3_gib(tmp_path):
    images = bodies(40_000_000, tmp_path)
    run = burst(ROOT, list(MIX), images, tmp_path / "server.log", kill_above_bytes=6 * GIB)  # a shared machine's guard
    if run["killed_above_limit"] or run["peak_mib"] >= 3 * 1024:
        raise PeakAboveBudget(f"peak {run['peak_mib']} MiB, more than 3 GiB: {run}")
    log = (tmp_path / "server.log").read_text()
    assert run["statuses"] == [200] * len(MIX), (run, log[-3000:])

"""detector/modeling/speeds.py: the modes' names and help, without torch and without figures."""

from __future__ import annotations

import re
import subprocess
import sys

from detector.modeling.speeds import DEFAULT_SPEED, SPEED_HELP, SPEED_NAMES, SPEEDS

# A speed-up ("1.5x", "1.5-1.9x"), a time ("2.1 s", "340 ms") or a share ("99%").
FIGURE = re.compile(r"\d(\.\d+)?\s*(x\b|ms\b|s\b|%)")


def test_the_help_names_every_mode_and_the_default_without_figures() -> None:
    assert SPEED_NAMES == tuple(SPEEDS) and DEFAULT_SPEED in SPEEDS
    for name in SPEED_NAMES:
        assert f"{name}:" in SPEED_HELP
    assert f"default: {DEFAULT_SPEED}" in SPEED_HELP
    assert FIGURE.search(SPEED_HELP) is None, FIGURE.search(SPEED_HELP)
    assert "bench/results/" in SPEED_HELP and "README" in SPEED_HELP


def test_the_figure_pattern_finds_figures() -> None:  # so that the test above can fail
    assert all(FIGURE.search(text) for text in ("1.5-1.9x the exact mode", "in 2.1 s", "340 ms", "99% of boxes"))


def test_speeds_import_without_torch() -> None:
    code = "import sys, detector.modeling.speeds; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

"""docker-compose.yml validates (there is no Docker engine here: only the file is checked)."""

import shutil
import subprocess
from pathlib import Path

from tests.inputs import missing_input

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_validates():
    compose = _compose()
    if compose is None:
        missing_input("neither `docker compose` nor `docker-compose` is installed (.ci/run installs docker-compose)")
    result = subprocess.run([*compose, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "/readyz" in result.stdout and "capabilities" in result.stdout and "nvidia" in result.stdout


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def test_a_shutdown_fits_the_stop_grace_period():
    """The service's bound on a shutdown (shutdown_timeout_s + SHUTDOWN_MARGIN_S, api/__main__.py) is below
    compose's stop_grace_period, with the value compose sets and with the default."""
    import re

    from api.settings import SHUTDOWN_MARGIN_S, Settings

    text = (ROOT / "docker-compose.yml").read_text()
    grace = _seconds(re.search(r"^\s*stop_grace_period:\s*(\S+)", text, re.M).group(1))
    shutdown = float(re.search(r"DETECTOR_SHUTDOWN_TIMEOUT_S:\s*\$\{DETECTOR_SHUTDOWN_TIMEOUT_S:-([\d.]+)\}", text).group(1))
    forward = float(re.search(r"DETECTOR_FORWARD_TIMEOUT_S:\s*\$\{DETECTOR_FORWARD_TIMEOUT_S:-([\d.]+)\}", text).group(1))
    defaults = Settings()
    for value in (shutdown, defaults.shutdown_timeout_s):
        assert value + SHUTDOWN_MARGIN_S < grace
    # A forward pass that is not stuck (within forward_timeout_s) still ends within a shutdown.
    assert forward <= shutdown and defaults.forward_timeout_s <= defaults.shutdown_timeout_s

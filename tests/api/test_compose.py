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

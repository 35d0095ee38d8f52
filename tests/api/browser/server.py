"""``python -m api`` as a real process on a free loopback port, for the browser to talk to."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api.serving import PRESET

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(log_path: Path, api_keys: str = "", timeout_s: float = 120.0) -> Iterator[str]:
    """The base URL of a started, ready service (the small model, one thread); its output goes to
    ``log_path``, and is quoted if it fails to become ready."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DETECTOR_API_KEYS": api_keys}
    command = [sys.executable, "-m", "api", "--preset", PRESET, "--port", str(port), "--log-level", "warning"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, base, log_path, timeout_s)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen, base: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited early:\n{log_path.read_text()}"
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the server did not become ready in {timeout_s} s:\n{log_path.read_text()}")


def detect_requests(base: str, key: str) -> int:
    """POST /detect answers the server has counted so far, whatever their status (GET /metrics)."""
    text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10).raise_for_status().text
    return round(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "detector_requests_total" and sample.labels.get("route") == "/detect"
        )
    )

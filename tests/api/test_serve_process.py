"""``python -m api`` as a real process on a loopback port: it becomes ready, answers, and on SIGTERM
finishes the request in flight and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.api.api_images import jpeg
from tests.api.serving import PRESET, as_file

ROOT = Path(__file__).resolve().parents[2]
MAX_WAIT_MS = 1500  # a lone request waits this long for company: long enough to signal mid-request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, base: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited early: {proc.communicate()[0]}"
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become ready")


def test_serves_then_drains_on_sigterm_and_exits_0():
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DETECTOR_API_KEYS": ""}
    command = [sys.executable, "-m", "api", "--preset", PRESET, "--port", str(port), "--max-wait-ms", str(MAX_WAIT_MS),
               "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_ready(proc, base)
        first = httpx.post(f"{base}/detect", files=as_file(jpeg(64, 48)), timeout=30)
        assert first.status_code == 200 and first.json()["width"] == 64

        in_flight: dict = {}

        def post() -> None:
            t0 = time.monotonic()
            in_flight["response"] = httpx.post(f"{base}/detect", files=as_file(jpeg(32, 24)), timeout=30)
            in_flight["seconds"] = time.monotonic() - t0

        client = threading.Thread(target=post)
        client.start()
        time.sleep(MAX_WAIT_MS / 1000 / 3)  # the request is waiting in the batcher
        proc.send_signal(signal.SIGTERM)
        client.join(30)
        exit_code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read()
    assert in_flight["response"].status_code == 200, output
    assert in_flight["response"].json()["width"] == 32
    assert in_flight["seconds"] >= MAX_WAIT_MS / 1000 / 3  # it really was in flight at the signal
    assert exit_code == 0, output
    assert "Traceback" not in output, output

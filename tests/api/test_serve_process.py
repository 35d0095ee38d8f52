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


def _shutting_down(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 503
    except httpx.TransportError:  # the listening socket is closed
        return True


def test_serves_then_drains_on_sigterm_and_exits_0():
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DETECTOR_API_KEYS": ""}
    command = [sys.executable, "-m", "api", "--preset", PRESET, "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_ready(proc, base)
        first = httpx.post(f"{base}/detect", files=as_file(jpeg(64, 48)), timeout=30)
        assert first.status_code == 200 and first.json()["width"] == 64

        # The request in flight at the signal: its body is sent in two halves, the signal in between.
        body, half_sent, signalled, in_flight = jpeg(32, 24), threading.Event(), threading.Event(), {}

        def halves():
            yield body[: len(body) // 2]
            half_sent.set()
            signalled.wait(30)
            yield body[len(body) // 2 :]

        def post() -> None:
            in_flight["response"] = httpx.post(
                f"{base}/detect", content=halves(), headers={"content-type": "image/jpeg"}, timeout=30
            )

        client = threading.Thread(target=post)
        client.start()
        assert half_sent.wait(30)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not _shutting_down(base):  # readiness fails, or new connections are refused
            assert time.monotonic() < deadline, "the server did not start shutting down"
            time.sleep(0.02)
        signalled.set()
        client.join(30)
        exit_code = proc.wait(30)
    finally:
        signalled.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read()
    assert in_flight["response"].status_code == 200, output
    assert in_flight["response"].json()["width"] == 32
    assert exit_code == 0, output
    assert "Traceback" not in output, output

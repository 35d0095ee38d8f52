"""``python -m api`` as a real process on a loopback port (imported as tests.api.process), for the
process, browser and reliability tests.

Its output goes to a file, not a pipe (a pipe nobody reads blocks a chatty server); its memory is
read from /proc. The process is always gone when the ``with`` block ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.api.serving import PRESET

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    base: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def rss_mb(self) -> float:
        """Resident memory of the server process, from /proc (Linux)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS in /proc status")

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", timeout=kwargs.pop("timeout", 10), **kwargs)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited early ({self.proc.returncode}):\n{self.output()}"
            try:
                if self.get("/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server did not become ready:\n{self.output()}")

    def wait_readyz_says(self, text: str, timeout_s: float = 60.0) -> httpx.Response:
        """Until /readyz's answer contains ``text`` (a load failure's reason, say); that answer."""
        deadline = time.monotonic() + timeout_s
        while text not in (ready := self.get("/readyz")).text:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.1)
        return ready

    def wait_listening(self, timeout_s: float = 120.0) -> None:
        """Until /healthz answers at all (with any status)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited early ({self.proc.returncode}):\n{self.output()}"
            try:
                self.get("/healthz", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"the server never listened:\n{self.output()}")

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)


@contextmanager
def running(
    log_dir: Path, *flags: str, preset: str | None = PRESET, api_keys: str = "", module: str = "api",
    threads: int = 1, env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Start ``python -m MODULE --preset PRESET --port <free> *flags`` (no --preset for None; ``threads``
    threads; ``env`` added to the environment; its output in a file of ``log_dir``); kill it at the end if
    still alive. ``module``: ``api``, or a test's wrapper of it."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DETECTOR_API_KEYS": api_keys, "PYTHONUNBUFFERED": "1",
           **(env or {})}
    command = [sys.executable, "-m", module, *(["--preset", preset] if preset else []), "--port", str(port),
               "--log-level", "info", *flags]
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Server(proc, f"http://127.0.0.1:{port}", log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

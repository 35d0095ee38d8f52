"""``python -m api`` as a real process on a loopback port: it becomes ready, answers, and on SIGTERM
finishes the request in flight and exits 0."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx

from tests.api.api_images import jpeg
from tests.api.process import running
from tests.api.serving import as_file


def _server_read_everything_sent(port: int) -> bool:
    """Whether the server has read all that clients sent it: some connection is open (ESTABLISHED) on its
    port and none has bytes waiting in its receive queue (/proc/net/tcp: local address, state, then
    tx_queue:rx_queue in hex). Then uvicorn has parsed the request's headers and the request is in flight."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    server_side = [row for row in rows if int(row[1].rsplit(":", 1)[1], 16) == port and row[3] == "01"]
    return bool(server_side) and all(int(row[4].split(":")[1], 16) == 0 for row in server_side)


def _shutting_down(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 503
    except httpx.TransportError:  # the listening socket is closed
        return True


def test_serves_then_drains_on_sigterm_and_exits_0(tmp_path):
    with running(tmp_path, "--log-level", "warning") as server:
        server.wait_ready(90)
        base = server.base
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
        try:
            assert half_sent.wait(30)
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while not _shutting_down(base):  # readiness fails, or new connections are refused
                assert time.monotonic() < deadline, "the server did not start shutting down"
                time.sleep(0.02)
        finally:
            signalled.set()
        client.join(30)
        exit_code = server.proc.wait(30)
        output = server.output()
    assert in_flight["response"].status_code == 200, output
    assert in_flight["response"].json()["width"] == 32
    assert exit_code == 0, output
    assert "Traceback" not in output, output


def test_sigterm_with_a_stuck_forward_pass_answers_503_and_exits_within_the_bound(tmp_path):
    """The forward pass hangs (tests/api/stuck_forward.py); SIGTERM: the request in it gets 503 once
    ``shutdown_timeout_s`` has passed, and the process exits 0 within shutdown_timeout_s + SHUTDOWN_MARGIN_S."""
    from api.settings import SHUTDOWN_MARGIN_S
    from tests.api.stuck_forward import STUCK_HEIGHT

    shutdown_s = 2.0
    flags = ("--shutdown-timeout-s", str(shutdown_s), "--forward-timeout-s", "600", "--log-level", "warning")
    with running(tmp_path, *flags, module="tests.api.stuck_forward") as server:
        server.wait_ready(90)
        in_flight = {}

        def post() -> None:
            in_flight["response"] = httpx.post(
                f"{server.base}/detect", files=as_file(jpeg(40, STUCK_HEIGHT)), timeout=60
            )

        client = threading.Thread(target=post)
        client.start()
        deadline = time.monotonic() + 30
        while "detector_queue_wait_seconds_count 1.0" not in server.get("/metrics").text:  # its pass has begun
            assert time.monotonic() < deadline and client.is_alive(), server.output()
            time.sleep(0.05)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        exit_code = server.proc.wait(60)
        took = time.monotonic() - signalled
        client.join(10)
        output = server.output()
    assert in_flight["response"].status_code == 503, output
    assert "shutting down" in in_flight["response"].json()["detail"]
    assert exit_code == 0, output
    assert shutdown_s <= took < shutdown_s + SHUTDOWN_MARGIN_S, output

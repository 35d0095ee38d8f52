"""Faults and restarts of the service: the model failing for a batch, the answer failing after it,
SIGTERM with several requests in flight, weights that are missing or corrupt at start, and an app
started a second time.

What the service does with a model fault (api/batcher.py): a batch that raises is run again one
image at a time, so a fault that lasts one call costs nothing, and one that lasts fails exactly the
images it hits (500, "inference failed"); the next batch is served as usual. Missing or corrupt
weights: the process stays up and says why on /healthz and /readyz (both 503, "the model failed
to load: ..."), never turns ready, logs the reason, and exits 0 on SIGTERM.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.api.api_images import jpeg
from tests.api.serving import as_file, serving, settings, wait_ready
from tests.reliability import tally
from tests.api.process import running


class FaultyPredictor:
    """The real predictor, whose next ``faults`` calls to ``predict`` raise (fault injection)."""

    def __init__(self, real) -> None:
        self._real = real
        self.faults = 0
        self.calls: list[int] = []  # batch size of every call
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._real, name)

    def predict(self, images):
        with self._lock:
            self.calls.append(len(images))
            fail, self.faults = self.faults > 0, max(self.faults - 1, 0)
        if fail:
            raise RuntimeError("injected: the model failed")  # out of memory is a 503 (tests/api/test_batcher.py)
        return self._real.predict(images)


def _post_together(client: TestClient, n: int) -> list[int]:
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(client.post, "/detect", files=as_file(jpeg())) for _ in range(n)]
        return [f.result().status_code for f in futures]


def _batched(faulty: FaultyPredictor) -> list[int]:
    """The sizes of the calls made since the last look."""
    calls, faulty.calls = faulty.calls, []
    return calls


@pytest.fixture
def faulty(predictor):
    faulty = FaultyPredictor(predictor)
    # 3 requests arrive within the 1.5 s window: they share one batch (the warm-up is a call of 1).
    with serving(faulty, max_batch_size=3, max_wait_ms=1500) as client:
        _batched(faulty)
        yield faulty, client


def test_a_fault_for_the_batch_and_its_reruns_fails_that_batch_only(faulty):
    faulty, client = faulty
    faulty.faults = 4  # the batch of 3, then each of its images run alone
    assert _post_together(client, 3) == [500, 500, 500]
    assert _batched(faulty) == [3, 1, 1, 1]
    assert _post_together(client, 3) == [200, 200, 200]  # the next batch
    assert _batched(faulty) == [3]
    tally.FAULTS.append("model raised for a batch of 3 and its reruns: those 3 got 500, the next batch 200")


def test_a_fault_that_lasts_one_call_costs_nothing(faulty):
    faulty, client = faulty
    faulty.faults = 1
    assert _post_together(client, 3) == [200, 200, 200]
    assert _batched(faulty) == [3, 1, 1, 1]
    tally.FAULTS.append("model raised once for a batch of 3: rerun one by one, all 200")


def test_a_fault_hitting_one_rerun_fails_that_image_alone(faulty):
    faulty, client = faulty
    faulty.faults = 2  # the batch, then the first image alone
    statuses = _post_together(client, 3)
    assert sorted(statuses) == [200, 200, 500], statuses
    response = client.post("/detect", files=as_file(jpeg()))
    assert response.status_code == 200
    tally.FAULTS.append("model raised for a batch and one rerun: 1 image 500, 2 images 200, then 200")


def test_a_fault_after_the_model_fails_that_request_only(predictor, monkeypatch):
    with serving(predictor, max_wait_ms=5) as client:
        calls, to_json = [], predictor.to_json

        def broken_to_json(det, **kwargs):  # encoding the answer fails once
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("injected: encoding failed")
            return to_json(det, **kwargs)

        monkeypatch.setattr(client.app.state.service.predictor, "to_json", broken_to_json)
        first = client.post("/detect", files=as_file(jpeg()))
        assert first.status_code == 500 and first.json() == {"detail": "internal server error"}
        assert client.post("/detect", files=as_file(jpeg())).status_code == 200
        assert client.get("/readyz").status_code == 200
    tally.FAULTS.append("encoding the answer raised: that request 500 (no internals leaked), the next 200")


def test_an_app_started_a_second_time_is_ready_again_and_serves(predictor):
    """Its lifespan run again (a test client entered twice): before the fix, /readyz said
    "shutting down" for ever after the first shutdown."""
    app = create_app(settings(max_wait_ms=5), predictor=predictor)
    for _ in range(2):
        with TestClient(app) as client:
            wait_ready(client, timeout_s=60)
            assert client.post("/detect", files=as_file(jpeg())).status_code == 200
    tally.FAULTS.append("app lifespan run twice: ready and serving both times")


# ---- the real process


def _established(port: int) -> int:
    """TCP connections accepted on ``port`` of this machine and still open (/proc/net/tcp: the local
    address's port in hex, state 01 = ESTABLISHED)."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(int(row[1].rsplit(":", 1)[1], 16) == port and row[3] == "01" for row in rows)


def test_sigterm_with_requests_in_flight_answers_them_all_and_exits_0(tmp_path):
    n = 6
    # A batch of up to 8 waits 8 s for company: the 6 requests are all in flight when the signal comes, as
    # soon as the server has accepted them (uvicorn lets in-flight requests finish: this test takes ~9 s).
    flags = ["--max-batch-size", "8", "--max-wait-ms", "8000", "--log-level", "warning"]
    with running(tmp_path, *flags) as server:
        server.wait_ready()
        results: list = [None] * n

        def post(i: int) -> None:
            try:
                r = httpx.post(f"{server.base}/detect", files=as_file(jpeg(32 + i, 24)), timeout=120)
                results[i] = (r.status_code, r.json().get("width"), time.monotonic())
            except httpx.HTTPError as exc:
                results[i] = (type(exc).__name__, None, time.monotonic())

        threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        port, deadline = int(server.base.rsplit(":", 1)[1]), time.monotonic() + 60
        while _established(port) < n:  # all sent, none answered
            assert time.monotonic() < deadline and not any(results), (results, server.output())
            time.sleep(0.01)
        time.sleep(0.2)  # (accepted: their few hundred bytes are read at once)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(180)
        exit_code = server.proc.wait(60)
    output = server.output()
    assert [r[:2] for r in results] == [(200, 32 + i) for i in range(n)], output
    assert all(r[2] > signalled for r in results), "each was still in flight at the signal"
    assert exit_code == 0, output
    assert "Traceback" not in output, output
    tally.FAULTS.append(f"SIGTERM with {n} requests in flight: {n} answered 200, exit 0")


def _truncated(tmp_path):
    from detector.modeling.presets import get_preset
    from detector.modeling.rcnn import build_model
    from detector.weights import save_weights

    whole, path = tmp_path / "whole.safetensors", tmp_path / "cut.safetensors"
    save_weights(build_model(get_preset("small_r18_fpn")), whole)
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return path, "cut.safetensors: not a readable weights file"


def _missing(tmp_path):
    return tmp_path / "nowhere.safetensors", "nowhere.safetensors: weights file not found"


# (tests/api/test_health.py covers an unknown preset in-process; tests/reliability/test_weights_security.py
# a malicious pickle and a file whose SHA-256 is not the catalogue's.)
@pytest.mark.parametrize("make", [_missing, _truncated], ids=["missing", "truncated"])
def test_bad_weights_at_start_are_logged_once_and_never_turn_ready(tmp_path, make):
    """The probes are open to anyone: they say "failed: see the server log", and the log says why."""
    path, reason = make(tmp_path)
    with running(tmp_path, "--weights", str(path)) as server:
        server.wait_listening()
        ready = server.wait_readyz_says("failed")
        for _ in range(10):  # it stays that way
            assert server.get("/readyz").status_code == 503
            time.sleep(0.05)
        health = server.get("/healthz")
        refused = httpx.post(f"{server.base}/detect", files=as_file(jpeg()), timeout=10)
        exit_code = server.terminate()
    output = server.output()
    for answer in (ready, health, refused):
        assert answer.status_code == 503 and answer.json() == {"detail": "failed: see the server log"}, answer.text
        assert str(tmp_path) not in answer.text and "Error" not in answer.text
    assert output.count(reason) == 1, output  # the log says why, once, with the path
    assert f"{path}: " in output
    assert exit_code == 0, output
    tally.FAULTS.append(f"{path.name} at start: 503 'see the server log' on /healthz and /readyz, the reason "
                        "logged once, exit 0 on SIGTERM")

"""GET /healthz and GET /readyz: alive at once, ready only once the model is warm, not ready while
draining, both open without an API key, a failed load or a failed device reported without its details
(they go to the log); out of memory answers "retry later" and leaves the service ready."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch

from fastapi.testclient import TestClient

from api.main import create_app
from tests.api.api_images import jpeg
from tests.api.serving import as_file, serving, settings, wait_ready


class SlowToWarmPredictor:
    """The real predictor, whose first forward (the warm-up) waits until the test releases it."""

    def __init__(self, real) -> None:
        self._real = real
        self.release = threading.Event()

    def __getattr__(self, name):
        return getattr(self._real, name)

    def predict(self, images):
        self.release.wait(30)
        return self._real.predict(images)


def test_alive_but_not_ready_until_warm(predictor):
    slow = SlowToWarmPredictor(predictor)
    with TestClient(create_app(settings(), predictor=slow)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        loading = client.get("/readyz")
        assert loading.status_code == 503 and "loading" in loading.json()["detail"]
        refused = client.post("/detect", files=as_file(jpeg()))
        assert refused.status_code == 503 and "retry-after" in refused.headers
        slow.release.set()
        wait_ready(client)
        assert client.get("/readyz").json() == {"status": "ready"}


def test_not_ready_while_draining(predictor):
    with serving(predictor) as client:
        client.app.state.service.draining = True  # what SIGTERM does (api/__main__.py)
        draining = client.get("/readyz")
        assert draining.status_code == 503 and "shutting down" in draining.json()["detail"]
        assert client.get("/healthz").status_code == 200


def _failed_load(tmp_path):
    weights = tmp_path / "secret-dir" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"not weights")
    return settings(weights=str(weights)), [str(weights), "not a readable weights file"]


def _unknown_preset(tmp_path):
    return settings(preset="no_such_preset"), ["unknown model preset 'no_such_preset'"]


@pytest.mark.parametrize("make", [_failed_load, _unknown_preset], ids=["unreadable-weights", "unknown-preset"])
def test_a_model_that_fails_to_load_is_reported_to_the_log_not_to_strangers(tmp_path, caplog, make):
    app_settings, secrets = make(tmp_path)
    with caplog.at_level(logging.ERROR, logger="api.main"), TestClient(create_app(app_settings)) as client:
        for _ in range(500):
            response = client.get("/readyz")
            if response.json()["detail"] != "loading":
                break
            time.sleep(0.01)
        health = client.get("/healthz")
        detect = client.post("/detect", files=as_file(jpeg()))
        info = client.get("/v1/model")
    for answer in (response, health, detect, info):  # restart me; and why is in the log only
        assert answer.status_code == 503 and answer.json() == {"detail": "failed: see the server log"}, answer.text
    (record,) = [r for r in caplog.records if "failed to load" in r.getMessage()]  # logged once
    assert all(secret in record.getMessage() for secret in secrets), record.getMessage()


def test_probes_need_no_api_key(predictor):
    with serving(predictor, api_keys=["secret"]) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


class FailingPredictor:
    """The real predictor, whose forward passes raise ``error`` once the test sets it (after the warm-up)."""

    def __init__(self, real) -> None:
        self._real = real
        self.error: Exception | None = None

    def __getattr__(self, name):
        return getattr(self._real, name)

    def predict(self, images):
        if self.error is not None:
            raise self.error
        return self._real.predict(images)


def test_a_fatal_cuda_error_turns_both_probes_red_and_is_logged(predictor, caplog):
    failing = FailingPredictor(predictor)
    with caplog.at_level(logging.CRITICAL, logger="api.batcher"), serving(failing) as client:
        failing.error = RuntimeError("CUDA error: an illegal memory access was encountered")
        first = client.post("/detect", files=as_file(jpeg()))
        failing.error = None  # even if the device answered again: its context is gone, restart
        later = client.post("/detect", files=as_file(jpeg()))
        ready, health = client.get("/readyz"), client.get("/healthz")
    assert first.status_code == later.status_code == 503 and "retry-after" not in first.headers
    for probe in (ready, health):
        assert probe.status_code == 503 and probe.json() == {"detail": "failed: see the server log"}
    assert any("illegal memory access" in (r.exc_text or "") for r in caplog.records if r.levelno == logging.CRITICAL)


def test_out_of_memory_answers_retry_later_and_the_service_stays_ready(predictor):
    failing = FailingPredictor(predictor)
    with serving(failing) as client:
        failing.error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        refused = client.post("/detect", files=as_file(jpeg()))
        ready = client.get("/readyz")
        failing.error = None
        served = client.post("/detect", files=as_file(jpeg()))
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1, refused.text
    assert "out of memory" in refused.json()["detail"]
    assert ready.status_code == 200 and served.status_code == 200


class ThreadRecordingPredictor:
    """The real predictor, recording the thread of each forward pass."""

    def __init__(self, real) -> None:
        self._real = real
        self.threads: list[str] = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def predict(self, images):
        self.threads.append(threading.current_thread().name)
        return self._real.predict(images)

    def to_json(self, det, **options):
        self.encoded_on = threading.current_thread().name
        return self._real.to_json(det, **options)


def test_the_warm_up_runs_on_the_thread_that_serves_and_encoding_off_it(predictor):
    recording = ThreadRecordingPredictor(predictor)
    with serving(recording) as client:
        warm_up = list(recording.threads)
        assert client.post("/detect", files=as_file(jpeg()), params={"masks": "rle"}).status_code == 200
    assert len(warm_up) == len(predictor.warm_up_batches(4)) >= 1
    assert set(recording.threads) == {"detector-forward"}
    assert recording.encoded_on != "detector-forward"  # masks pasted and RLE-encoded while the next batch runs

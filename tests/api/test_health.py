"""GET /healthz and GET /readyz: alive at once, ready only once the model is warm, not ready while
draining, and both open without an API key."""

from __future__ import annotations

import threading

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


def test_a_model_that_fails_to_load_is_reported():
    with TestClient(create_app(settings(preset="no_such_preset"))) as client:
        for _ in range(500):
            response = client.get("/readyz")
            if "failed" in response.json()["detail"]:
                break
        assert response.status_code == 503 and "no_such_preset" in response.json()["detail"]
        assert client.get("/healthz").status_code == 503  # restart me
        assert client.post("/detect", files=as_file(jpeg())).status_code == 503


def test_probes_need_no_api_key(predictor):
    with serving(predictor, api_keys=["secret"]) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200

"""Apps around a real Predictor for the service tests (imported as tests.api.serving)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings

PRESET = "small_r18_fpn"


class IsolatedSettings(Settings):
    """Settings from arguments only: the environment's DETECTOR_* variables do not leak into tests."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **other_sources):
        return (init_settings,)


def settings(**overrides) -> Settings:
    return IsolatedSettings(**overrides)


def wait_ready(client: TestClient, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.02)


@contextmanager
def serving(predictor, **overrides) -> Iterator[TestClient]:
    """A started app (lifespan run, model warm) around ``predictor``."""
    app = create_app(settings(**overrides), predictor=predictor)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


def as_file(data: bytes, name: str = "image.jpg", content_type: str = "image/jpeg") -> dict:
    return {"image": (name, data, content_type)}

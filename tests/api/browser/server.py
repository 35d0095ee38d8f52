"""``python -m api`` as a real process on a free loopback port, for the browser to talk to."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api.process import running


@contextmanager
def serve(log_dir: Path, api_keys: str = "", timeout_s: float = 120.0) -> Iterator[str]:
    """The base URL of a started, ready service (the small model, one thread); its output goes to a
    file in ``log_dir``, and is quoted if it fails to become ready."""
    with running(log_dir, api_keys=api_keys) as server:
        server.wait_ready(timeout_s)
        yield server.base
        server.terminate(30)


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

"""GET /metrics: Prometheus text with requests by route and status, latencies, batch sizes and
queue depth; each app has its own registry."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.main import create_app
from tests.api.api_images import jpeg
from tests.api.serving import as_file, settings


def test_metrics_count_requests_batches_and_queue(client):
    assert client.post("/detect", files=as_file(jpeg())).status_code == 200
    assert client.post("/detect", files=as_file(b"not an image")).status_code == 415
    assert client.post("/detect", content=b"x" * 2_000_001, headers={"content-type": "image/png"}).status_code == 413
    client.get("/no/such/page")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in (
        'detector_requests_total{method="POST",route="/detect",status="200"}',
        'detector_requests_total{method="POST",route="/detect",status="415"}',
        'detector_requests_total{method="POST",route="/detect",status="413"}',
        'detector_requests_total{method="GET",route="unmatched",status="404"}',
        'detector_request_duration_seconds_bucket{le="0.5",route="/detect"}',
        "detector_batch_size_bucket{le=",
        "detector_inference_seconds_count",
        "detector_queue_wait_seconds_count",
        "detector_queue_depth 0.0",
        "detector_model_ready 1.0",
    ):
        assert line in text, line
    assert "/no/such/page" not in text  # raw paths never become labels


def test_each_app_has_its_own_registry():
    # Two apps in one process: building the second would raise "Duplicated timeseries" on a shared registry,
    # and a request to one must count in its own /metrics only. (No `with`: no model loads; none is needed.)
    first, second = TestClient(create_app(settings())), TestClient(create_app(settings()))
    assert first.get("/no/such/page").status_code == 404
    counted = 'detector_requests_total{method="GET",route="unmatched",status="404"} 1.0'
    assert counted in first.get("/metrics").text
    assert 'route="unmatched"' not in second.get("/metrics").text

"""Prometheus metrics, in a registry of the app's own (tests build many apps in one process).

``RequestMetrics`` is a pure ASGI middleware: it counts every response by route template and
status (including those sent by other middleware, e.g. 413) and times it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: "other"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "detector_requests", "HTTP requests answered, by route and status", ["method", "route", "status"], registry=r
        )
        self.request_latency = Histogram(
            "detector_request_duration_seconds", "time to answer a request", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "detector_queue_wait_seconds", "time from joining the queue to the start of the forward pass",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.inference = Histogram(
            "detector_inference_seconds", "time of one batched forward pass", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("detector_batch_size", "images per forward pass", buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("detector_queue_depth", "requests waiting for the model", registry=r)
        self.model_ready = Gauge("detector_model_ready", "1 once the model is loaded and warmed up", registry=r)

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    # BatchObserver (api/batcher.py)
    def observe_batch(self, size: int, run_s: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(run_s)

    def observe_queue_wait(self, wait_s: float) -> None:
        self.queue_wait.observe(wait_s)


class RequestMetrics:
    """Counts and times every HTTP response. Routes are labelled by their template, never the raw
    path, so a scan of random URLs cannot blow up the number of series."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope.setdefault("state", {})["started"] = started  # request.state.started: for timings.total_ms
        status = 500  # what the client sees if the app raises before answering

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = _route_template(scope)
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.request_latency.labels(route).observe(time.perf_counter() - started)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")  # set by the router on this same scope when a route matched
    return route.path if route is not None else "unmatched"

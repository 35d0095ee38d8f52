"""api/settings.py and the flags of api/__main__.py: defaults, DETECTOR_* variables, flags over both."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.__main__ import parse_args
from api.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(f"DETECTOR_{name.upper()}", raising=False)


def test_defaults():
    s = Settings()
    assert (s.max_batch_size, s.max_wait_ms, s.queue_size) == (4, 10.0, 64)
    assert s.max_body_bytes == 20 * 1024 * 1024 and s.max_pixels == 40_000_000
    assert (s.host, s.port, s.api_keys, s.weights) == ("127.0.0.1", 8000, [], None)
    assert s.keep_freed_memory is True


def test_environment_with_prefix(monkeypatch):
    monkeypatch.setenv("DETECTOR_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("DETECTOR_DEVICE", "cuda:1")
    monkeypatch.setenv("DETECTOR_API_KEYS", "alpha, beta,")
    monkeypatch.setenv("DETECTOR_KEEP_FREED_MEMORY", "false")
    s = Settings()
    assert (s.max_batch_size, s.device, s.api_keys) == (8, "cuda:1", ["alpha", "beta"])
    assert s.keep_freed_memory is False


def test_flags_override_environment(monkeypatch):
    monkeypatch.setenv("DETECTOR_PORT", "9000")
    monkeypatch.setenv("DETECTOR_QUEUE_SIZE", "5")
    overrides, log_level = parse_args(["--port", "9100", "--max-wait-ms", "2.5", "--api-keys", "k1,k2"])
    s = Settings(**overrides)
    assert (s.port, s.max_wait_ms, s.api_keys) == (9100, 2.5, ["k1", "k2"])
    assert s.queue_size == 5  # no flag: the environment stands
    assert log_level == "info"


def test_every_setting_has_a_flag():
    for name in Settings.model_fields:
        overrides, _ = parse_args([f"--{name.replace('_', '-')}", "1"])
        assert name in overrides


@pytest.mark.parametrize(
    "bad", [{"max_batch_size": 0}, {"score": 1}, {"port": 70000}, {"max_wait_ms": -1}, {"request_timeout_s": 0}]
)
def test_bad_values_are_refused(bad):
    with pytest.raises(ValidationError):
        Settings(**bad)


def test_the_defaults_bound_memory_and_shutdown_consistently():
    import os

    from api.settings import SHUTDOWN_MARGIN_S

    s = Settings()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert s.decode_concurrency == min(cores, 4)
    # uvicorn's 503 comes after the queue's own (with Retry-After), and leaves room for the probes.
    assert s.limit_concurrency > s.queue_size + s.max_batch_size + s.decode_concurrency
    # A forward pass that is not stuck ends within a shutdown; the shutdown fits compose's 60 s grace.
    assert s.forward_timeout_s <= s.shutdown_timeout_s and s.shutdown_timeout_s + SHUTDOWN_MARGIN_S < 60


def test_uvicorn_gets_the_concurrency_limit_and_the_graceful_shutdown_bound(monkeypatch):
    """From the command line to uvicorn's config (``_serve``; no model, no process-wide settings)."""
    from types import SimpleNamespace

    import uvicorn

    import api.__main__ as entry
    from api.settings import SHUTDOWN_MARGIN_S, Settings

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: seen.update(config=self.config))
    monkeypatch.setattr(entry.signal, "signal", lambda *args: None)  # leave pytest's own handlers alone
    overrides, _ = entry.parse_args(["--limit-concurrency", "7", "--shutdown-timeout-s", "12", "--forward-timeout-s", "10"])
    entry._serve(SimpleNamespace(), Settings(**overrides), "warning", on_exit=lambda: None)
    assert seen["config"].limit_concurrency == 7
    assert seen["config"].timeout_graceful_shutdown == 12 + SHUTDOWN_MARGIN_S


@pytest.mark.parametrize("device, flag, expected", [("cuda", "true", True), ("cuda:1", "false", False),
                                                    ("cpu", "true", False)])
def test_cudnn_benchmark_is_set_at_startup_on_cuda_only_when_asked(monkeypatch, device, flag, expected):
    import torch

    import api.__main__ as entry
    from api.settings import Settings

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    overrides, _ = entry.parse_args(["--device", device, "--cudnn-benchmark", flag, "--keep-freed-memory", "false"])
    entry.configure_process(Settings(**overrides))
    assert torch.backends.cudnn.benchmark is expected


def test_the_backend_and_its_onnx_file(monkeypatch):
    assert (Settings().backend, Settings().onnx) == ("torch", None)
    monkeypatch.setenv("DETECTOR_BACKEND", "onnxruntime")
    monkeypatch.setenv("DETECTOR_ONNX", "model.onnx")
    assert (Settings().backend, Settings().onnx) == ("onnxruntime", "model.onnx")
    with pytest.raises(ValidationError, match="backend"):
        Settings(backend="tensorrt")

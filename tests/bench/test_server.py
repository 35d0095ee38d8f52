"""bench/server.py against a real service on a loopback port (small model, tiny images): in this
process, and spawned as ``python -m api`` by the bench itself."""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from api.__main__ import parse_args
from api.main import create_app
from bench.server import (
    Engine,
    batch_sizes_between,
    check_loopback,
    image_size,
    main,
    parse_batch_histogram,
    percentile,
    server_command,
)
from tests.api.serving import settings

TINY = ["--requests", "2", "--max-seconds", "60", "--warmup", "0", "--image-size", "48", "64", "--threads", "1"]


@pytest.fixture(scope="module")
def service_url(predictor):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(settings(max_wait_ms=20), predictor=predictor)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the service did not become ready"
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def predictor():
    import torch

    from detector.predictor import Predictor

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return Predictor.from_preset("small_r18_fpn")


def test_server_bench_sweeps_concurrency_and_times_the_engine_alone(service_url, tmp_path, capsys):
    out = tmp_path / "server.json"
    assert main([service_url, "--concurrency", "1", "3", *TINY, "--requests", "3", "--engine-runs", "2",
                 "--json", str(out)]) == 0  # fmt: skip
    (run,) = json.loads(out.read_text())["runs"]
    assert run["url"] == service_url and run["server_args"] is None and run["model"]["preset"] == "small_r18_fpn"
    assert [r["concurrency"] for r in run["rows"]] == [1, 3]
    for r in run["rows"]:
        assert r["ok"] == 3 and r["errors"] == {} and r["requests_per_s"] > 0
        assert r["p50_s"] <= r["p95_s"] <= r["p99_s"]
        # The passes between the level's two /metrics readings held its 3 images, each once.
        assert 1 <= r["forward_passes"] <= 3 and r["forward_passes"] * r["mean_batch"] == pytest.approx(3, abs=0.02)
    assert run["rows"][0]["forward_passes"] == 3  # one client at a time: nobody to batch with
    assert run["model"]["speed"] == "fast"  # the engine baseline is loaded at the server's speed
    engine = run["engine"]
    assert engine["runs"] == 2 and engine["threads"] == 1
    assert 0 < engine["engine_min_s"] <= engine["engine_p50_s"] and engine["server_p50_s"] > 0
    # The server's answer holds the engine's work: a ratio far below 1 would mean it timed something else.
    assert engine["server_over_engine"] > 0.5
    assert "server / engine" in capsys.readouterr().out


def test_spawn_starts_a_server_with_the_args_measures_it_and_stops_it(tmp_path):
    out = tmp_path / "server.json"
    assert main(["--spawn", "--max-batch-size 1 --port 1", "--concurrency", "2", *TINY, "--engine-runs", "0",
                 "--json", str(out)]) == 0  # fmt: skip
    (run,) = json.loads(out.read_text())["runs"]
    assert run["server_args"] == "--max-batch-size 1 --port 1" and run["engine"] is None
    assert run["model"]["max_batch_size"] == 1  # the args reached the server
    (row,) = run["rows"]
    assert row["ok"] == 2 and row["mean_batch"] == 1.0
    check_loopback(run["url"])  # on a free loopback port, not the --port given
    with pytest.raises(httpx.TransportError):  # stopped
        httpx.get(f"{run['url']}/healthz", timeout=2)


def test_spawn_of_a_server_that_cannot_start_fails_at_once(tmp_path, capsys):
    started = time.monotonic()
    assert main(["--spawn", "--max-batch-size 0", *TINY, "--json", str(tmp_path / "server.json")]) == 1
    assert "exited with 2 before it was ready" in capsys.readouterr().err
    assert time.monotonic() - started < 60 and not (tmp_path / "server.json").exists()


def test_spawned_servers_listen_on_the_loopback_port_given_whatever_the_args():
    command = server_command("--host 0.0.0.0 --port 80 --max-wait-ms 5", 5555)
    assert command[1:3] == ["-m", "api"]
    overrides, _ = parse_args(command[3:])
    assert overrides == {"host": "127.0.0.1", "port": "5555", "max_wait_ms": "5"}


def test_url_and_spawn_are_exclusive():
    for argv in ([], ["http://127.0.0.1:8000", "--spawn", ""]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2


def test_engine_baseline_refuses_other_weights_than_the_server_s():
    model = {"preset": "small_r18_fpn", "device": "cpu", "speed": "exact"}
    with pytest.raises(ValueError, match="randomly initialised"):
        Engine({**model, "weights_sha256": None}, None, threads=1)
    with pytest.raises(ValueError, match="pass --weights"):
        Engine({**model, "weights_sha256": "0" * 64}, None, threads=1)


def test_only_loopback_urls_are_accepted():
    assert check_loopback("http://localhost:8000/") == "http://localhost:8000"
    assert check_loopback("http://[::1]:8000") == "http://[::1]:8000"
    for url in ("http://10.0.0.5:8000", "http://example.com", "ftp://127.0.0.1"):
        with pytest.raises(ValueError):
            check_loopback(url)


def test_batch_sizes_from_metrics_deltas():
    before = parse_batch_histogram('detector_batch_size_bucket{le="1.0"} 2.0\ndetector_batch_size_bucket{le="2.0"} 2.0\n'
                                   'detector_batch_size_bucket{le="+Inf"} 2.0\ndetector_batch_size_sum 2.0\n'
                                   'detector_batch_size_count 2.0\n')
    after = parse_batch_histogram('detector_batch_size_bucket{le="1.0"} 3.0\ndetector_batch_size_bucket{le="2.0"} 5.0\n'
                                  'detector_batch_size_bucket{le="+Inf"} 5.0\ndetector_batch_size_sum 9.0\n'
                                  'detector_batch_size_count 5.0\n')
    assert batch_sizes_between(before, after) == {"forward_passes": 3, "mean_batch": 2.33,
                                                  "passes_by_size": {"<=1": 1, "<=2": 2}}
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([5.0], 99) == 5.0


def test_several_image_sizes_are_sent_in_turn(service_url, tmp_path):
    """--image-sizes: the images of each size, in turn (a batch of several padded sizes runs as several passes)."""
    out = tmp_path / "server.json"
    assert main([service_url, "--concurrency", "1", *TINY, "--requests", "4", "--engine-runs", "0",
                 "--image-sizes", "48x64", "64x48", "--json", str(out)]) == 0  # fmt: skip
    data = json.loads(out.read_text())
    assert data["image"] == "synthetic 48x64 JPEG, synthetic 64x48 JPEG"
    assert data["runs"][0]["rows"][0]["ok"] == 4


def test_image_sizes_are_height_x_width():
    assert image_size("480x640") == (480, 640) and image_size("800X1216") == (800, 1216)
    for bad in ("480", "ax640", "0x640"):
        with pytest.raises(argparse.ArgumentTypeError):
            image_size(bad)

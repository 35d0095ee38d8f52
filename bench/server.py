"""Load generator for the service (``python -m api``), and the server's overhead over the engine alone.

    python bench/server.py --spawn "" --spawn "--max-batch-size 1" --concurrency 1 8 --requests 32
    python -m api --preset maskrcnn_r50_fpn &                     # or a service already running
    python bench/server.py http://127.0.0.1:8000 --concurrency 1 2 4 8 16 32 --requests 64

``--spawn ARGS`` starts ``python -m api ARGS`` on a free loopback port, waits for /readyz, runs the
sweep and stops it with SIGTERM; given several times, it measures one server after the other (above:
default batching, then batching off). ``--threads N`` gives the spawned servers and the engine baseline
N torch threads (default: torch's default in both). Only loopback URLs are accepted: this is a
benchmark of one's own service, not a load test of somebody else's.

At each concurrency level C, C clients send one image each, back to back (the images of ``--image-sizes``
in turn, when several are given: a batch of images of different padded sizes runs as several forward
passes, which one size would hide), until ``--requests`` answers have come back or ``--max-seconds`` have passed (then in-flight requests finish, none start). It reports
requests/s, latency percentiles (p50/p95/p99, of answered requests), errors by status, and the batch
sizes the service formed meanwhile (from the ``detector_batch_size`` histogram of /metrics, before and
after). After the level at concurrency 1 it compares the server with the engine alone, in this
process, on the same image with the same options: the model GET /v1/model names (``--weights`` must
be the file it serves: their SHA-256 are compared), ``predict`` then selecting and encoding as the
server does. It alternates one request to the idle server and one engine run, ``--engine-runs``
times, and reports both medians and the median of the pairs' ratios (server / engine), which a shared
machine's changing load moves far less than two medians taken one after the other.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the api and detector packages

from detector.mask_formats import DEFAULT_MASK_FORMAT, MASK_FORMATS  # noqa: E402
from detector.weights.catalogue import sha256_of  # noqa: E402

LOOPBACK_NAMES = ("localhost",)


def check_loopback(url: str) -> str:
    """``url`` without a trailing slash; ValueError unless it is http(s) on a loopback host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url}: expected an http:// or https:// URL")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in LOOPBACK_NAMES
    if not loopback:
        raise ValueError(f"{url}: only loopback hosts (127.0.0.1, ::1, localhost) are benchmarked")
    return url.rstrip("/")


def synthetic_jpeg(height: int, width: int, seed: int = 0) -> bytes:
    """A photo-like JPEG (smooth gradients plus noise) of ``height`` x ``width``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=90)
    return out.getvalue()


def image_size(text: str) -> tuple[int, int]:
    """"480x640" -> (480, 640): height x width."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHTxWIDTH, e.g. 480x640") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sides must be positive")
    return height, width


def parse_batch_histogram(text: str) -> dict:
    """{"sum", "count", "buckets": {le: cumulative count}} of ``detector_batch_size`` in Prometheus text."""
    hist = {"sum": 0.0, "count": 0.0, "buckets": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "detector_batch_size_bucket":
                hist["buckets"][sample.labels["le"]] = sample.value
            elif sample.name in ("detector_batch_size_sum", "detector_batch_size_count"):
                hist[sample.name.rsplit("_", 1)[1]] = sample.value
    return hist


def batch_sizes_between(before: dict, after: dict) -> dict:
    """Forward passes, mean images per pass, and passes per batch-size bucket ("<=le") in between."""
    count = after["count"] - before["count"]
    per_bucket, previous = {}, 0.0
    for le, cumulative in after["buckets"].items():
        n = cumulative - before["buckets"].get(le, 0.0)
        if n - previous > 0 and le != "+Inf":
            per_bucket[f"<={float(le):g}"] = int(n - previous)
        previous = n
    mean = (after["sum"] - before["sum"]) / count if count else 0.0
    return {"forward_passes": int(count), "mean_batch": round(mean, 2), "passes_by_size": per_bucket}


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between the closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# ---- a server of our own


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(server_args: str, port: int) -> list[str]:
    """``python -m api SERVER_ARGS`` on 127.0.0.1:``port`` (given last, so they win over the args)."""
    return [sys.executable, "-m", "api", "--log-level", "warning", *shlex.split(server_args),
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


@contextmanager
def spawned(server_args: str, threads: int | None, ready_timeout_s: float) -> Iterator[str]:
    """A ``python -m api SERVER_ARGS`` of our own: yields its URL once /readyz says ready, and stops it
    (SIGTERM, then waits for its drain) on leaving. Its log goes to our stderr."""
    port = free_port()
    env = dict(os.environ)
    if threads is not None:  # torch reads these at start-up: the server's intra-op threads
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    with api_process(server_command(server_args, port), port, cwd=ROOT, env=env,
                     ready_timeout_s=ready_timeout_s):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def api_process(command: list[str], port: int, *, cwd: Path, env: dict[str, str], ready_timeout_s: float,
                log: Path | None = None) -> Iterator[subprocess.Popen]:
    """Run ``command`` (a ``python -m api`` on 127.0.0.1:``port``; its output to ``log``, default ours),
    yield the process once /readyz says ready, and stop it on leaving: SIGTERM, its drain (at most 90 s),
    then kill. A RuntimeError (with the log's tail) when it exits or is not ready in time."""
    if log is None:
        proc = subprocess.Popen(command, cwd=cwd, env=env)
    else:
        with log.open("w") as out:
            proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url, what = f"http://127.0.0.1:{port}", " ".join(command[1:])
    tail = (lambda: ":\n" + log.read_text()[-3000:]) if log is not None else (lambda: "")
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not _ready(url):
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready{tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} was not ready after {ready_timeout_s:g} s{tail()}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


# ---- the engine alone


class Engine:
    """The model a server serves (same preset, weights, device and speed), loaded in this process: the
    server's work on one image, minus HTTP, decoding, the queue and the thread hand-offs."""

    def __init__(self, model: dict, weights: Path | None, threads: int | None) -> None:
        import torch

        from detector.predictor import Predictor

        if threads is not None:
            torch.set_num_threads(threads)
        if model["weights_sha256"] is None:
            raise ValueError("the server's model is randomly initialised: the engine baseline cannot load the same "
                             "one (pass --engine-runs 0)")
        self.predictor = Predictor.from_preset(model["preset"], weights, model["device"], speed=model["speed"])
        path = self.predictor.weights_path
        sha256 = sha256_of(path) if path is not None else None
        if sha256 != model["weights_sha256"]:
            raise ValueError(f"the server serves weights with SHA-256 {model['weights_sha256']}, the engine baseline "
                             f"loaded {path} ({sha256}): pass --weights with the server's file")
        self.threads = torch.get_num_threads()

    def once(self, body: bytes, params: dict) -> float:
        """Seconds of predict, select and encode (as POST /detect does) on the image in ``body``."""
        from api.decode import decode_image
        from api.schemas import DetectOptions

        options = DetectOptions(**params)
        image = decode_image(body, max_pixels=sys.maxsize)
        started = time.perf_counter()
        det = self.predictor.predict([image])[0]
        det = det.select(options.score_threshold, None, options.max_detections)
        self.predictor.to_json(det, masks=options.masks, keypoints=options.keypoints)
        return time.perf_counter() - started


async def server_over_engine(client: httpx.AsyncClient, url: str, body: bytes, params: dict, headers: dict,
                             engine: Engine, runs: int) -> dict:  # fmt: skip
    """``runs`` pairs of one request to the idle server, then the engine alone on the same image. A pair
    sees one moment's load, so the median of the pairs' ratios holds on a machine busy with other work."""
    engine.once(body, params)  # warm-up
    server_s, engine_s = [], []
    for _ in range(runs):
        started = time.perf_counter()
        response = await client.post(f"{url}/detect", content=body, params=params,
                                     headers={"Content-Type": "image/jpeg", **headers})  # fmt: skip
        response.raise_for_status()
        server_s.append(time.perf_counter() - started)
        engine_s.append(engine.once(body, params))
    return {
        "runs": runs,
        "threads": engine.threads,
        "engine_p50_s": round(statistics.median(engine_s), 4),
        "engine_min_s": round(min(engine_s), 4),
        "server_p50_s": round(statistics.median(server_s), 4),
        "server_over_engine": round(statistics.median(s / e for s, e in zip(server_s, engine_s)), 3),
    }


# ---- the sweep


async def run_level(client: httpx.AsyncClient, url: str, bodies: list[bytes], concurrency: int, requests: int,
                    max_seconds: float, params: dict, headers: dict) -> dict:
    """Send ``requests`` POST /detect (at most ``max_seconds``) from ``concurrency`` clients, the ``bodies``
    in turn."""
    latencies, statuses = [], Counter()
    started = time.perf_counter()
    deadline = started + max_seconds
    sent = 0

    async def client_loop() -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            body = bodies[sent % len(bodies)]
            sent += 1
            t = time.perf_counter()
            try:
                response = await client.post(f"{url}/detect", content=body, params=params,
                                             headers={"Content-Type": "image/jpeg", **headers})
                statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - t)
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ok = statuses.get("200", 0)
    return {
        "concurrency": concurrency,
        "sent": sent,
        "ok": ok,
        "errors": {k: v for k, v in statuses.items() if k != "200"},
        "seconds": round(elapsed, 3),
        "requests_per_s": round(ok / elapsed, 3) if elapsed else 0.0,
        "p50_s": round(percentile(latencies, 50), 4),
        "p95_s": round(percentile(latencies, 95), 4),
        "p99_s": round(percentile(latencies, 99), 4),
    }


async def sweep(url: str, bodies: list[bytes], args: argparse.Namespace) -> dict:
    """Every concurrency level against ``url``; the engine alone after the level at concurrency 1."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    params = {"masks": args.masks, "score_threshold": args.score_threshold}
    limits = httpx.Limits(max_connections=max(args.concurrency), max_keepalive_connections=max(args.concurrency))
    result = {"url": url, "model": None, "rows": [], "engine": None}
    async with httpx.AsyncClient(timeout=args.timeout_s, limits=limits) as client:
        ready = await client.get(f"{url}/readyz")
        if ready.status_code != 200:
            raise RuntimeError(f"{url}/readyz answered {ready.status_code}: {ready.text[:200]}")
        model = (await client.get(f"{url}/v1/model", headers=headers)).raise_for_status().json()
        keys = ("preset", "weights", "weights_sha256", "device", "speed", "max_batch_size")
        result["model"] = {key: model[key] for key in keys}
        # Loaded before the sweep: loading is CPU work, which must not overlap the server's.
        engine = Engine(model, args.weights, args.threads) if args.engine_runs > 0 else None
        for _ in range(args.warmup):
            for body in bodies:
                await client.post(f"{url}/detect", content=body, params=params,
                                  headers={"Content-Type": "image/jpeg", **headers})  # fmt: skip
        for concurrency in args.concurrency:
            before = await _batch_histogram(client, url, headers)
            row = await run_level(client, url, bodies, concurrency, args.requests, args.max_seconds, params, headers)
            after = await _batch_histogram(client, url, headers)
            if before is not None and after is not None:
                row.update(batch_sizes_between(before, after))
            result["rows"].append(row)
            print(format_row(row), flush=True)
            if concurrency == 1 and engine is not None:
                pairs = server_over_engine(client, url, bodies[0], params, headers, engine, args.engine_runs)
                result["engine"] = await pairs
                print(format_engine(result["engine"]), flush=True)
    return result


async def _batch_histogram(client: httpx.AsyncClient, url: str, headers: dict) -> dict | None:
    response = await client.get(f"{url}/metrics", headers=headers)
    return parse_batch_histogram(response.text) if response.status_code == 200 else None


HEADER = f"{'conc':>5} {'ok':>6} {'req/s':>8} {'p50 s':>8} {'p95 s':>8} {'p99 s':>8} {'passes':>7} {'batch':>6}  errors"


def format_row(r: dict) -> str:
    return (f"{r['concurrency']:>5} {r['ok']:>6} {r['requests_per_s']:>8.2f} {r['p50_s']:>8.3f} {r['p95_s']:>8.3f} "
            f"{r['p99_s']:>8.3f} {r.get('forward_passes', '-'):>7} {r.get('mean_batch', '-'):>6}  {r['errors'] or ''}")


def format_engine(e: dict) -> str:
    return (f"    {e['runs']} pairs at concurrency 1, server then engine alone ({e['threads']} threads): server p50 "
            f"{e['server_p50_s']:.3f} s, engine p50 {e['engine_p50_s']:.3f} s (min {e['engine_min_s']:.3f}), "
            f"server / engine {e['server_over_engine']:.3f}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("url", nargs="?", help="a running service's base URL on a loopback host, e.g. http://127.0.0.1:8000")
    p.add_argument("--spawn", action="append", metavar="ARGS",
                   help='start "python -m api ARGS" on a free loopback port for the sweep ("" for the defaults, '
                        '--spawn="--max-wait-ms=5" for one flag); repeat to measure several servers in turn')
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--requests", type=int, default=64, help="answers per concurrency level, at most")
    p.add_argument("--max-seconds", type=float, default=120.0, help="time per concurrency level, at most")
    p.add_argument("--warmup", type=int, default=2, help="requests sent before the sweep, not counted")
    p.add_argument("--image", type=Path, help="a JPEG to send (default: a synthetic one of --image-size)")
    p.add_argument("--image-size", nargs=2, type=int, default=[480, 640], metavar=("H", "W"))
    p.add_argument("--image-sizes", nargs="+", type=image_size, metavar="HxW",
                   help="synthetic JPEGs of these sizes, sent in turn (instead of --image-size)")
    p.add_argument("--masks", default=DEFAULT_MASK_FORMAT, choices=MASK_FORMATS)
    p.add_argument("--score-threshold", type=float, default=0.5, help="sent with each request (the API's default)")
    p.add_argument("--api-key", help="bearer key, when the service has DETECTOR_API_KEYS set")
    p.add_argument("--timeout-s", type=float, default=120.0, help="per request")
    p.add_argument("--threads", type=int, help="torch threads of the spawned servers and of the engine baseline")
    p.add_argument("--engine-runs", type=int, default=9, help="server/engine pairs at concurrency 1 (0: none)")
    p.add_argument("--weights", type=Path, help="the served weights, for the engine baseline (default: the preset's)")
    p.add_argument("--ready-timeout-s", type=float, default=300.0, help="for a spawned server to load and warm up")
    p.add_argument("--json", type=Path, default=Path("bench/server.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if (args.url is None) == (args.spawn is None):
        p.error("give either a URL or --spawn")
    if min(args.concurrency) < 1 or args.requests < 1 or args.max_seconds <= 0 or args.engine_runs < 0:
        p.error("--concurrency, --requests and --max-seconds must be positive, --engine-runs not negative")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be positive")
    if args.url is not None:
        try:
            check_loopback(args.url)
        except ValueError as exc:
            p.error(str(exc))
    if args.image:
        bodies, image = [args.image.read_bytes()], str(args.image)
    else:
        sizes = args.image_sizes or [tuple(args.image_size)]
        bodies = [synthetic_jpeg(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
        image = ", ".join(f"synthetic {h}x{w} JPEG" for h, w in sizes)
    runs = []
    try:
        for server_args in args.spawn or [None]:
            if server_args is None:
                print(f"{args.url}\n{HEADER}", flush=True)
                runs.append({"server_args": None, **asyncio.run(sweep(check_loopback(args.url), bodies, args))})
                continue
            with spawned(server_args, args.threads, args.ready_timeout_s) as url:
                print(f"python -m api {server_args}  ({url})\n{HEADER}", flush=True)
                runs.append({"server_args": server_args, **asyncio.run(sweep(url, bodies, args))})
    except (RuntimeError, ValueError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"image": image, "runs": runs}, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

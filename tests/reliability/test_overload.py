"""Overload against a real ``python -m api`` on loopback: twice as many concurrent clients as the
server holds (queue 4 + a batch of 2 running), a fixed number of requests, in three identical waves.

Every request is answered: 200 if it was accepted, else 503 at once with Retry-After; none hangs;
the server's own count of answers matches; memory after the third wave stays near the second's. (The
first wave brings the process to its working size: it keeps freed memory for the next forward pass,
detector/memory.py, so its size follows the largest pass it has run, e.g. its first batch of two.)
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait

import httpx
import pytest

from tests.api.api_images import jpeg
from tests.reliability import tally
from tests.api.process import running

QUEUE_SIZE, MAX_BATCH = 4, 2
CLIENTS = 2 * (QUEUE_SIZE + MAX_BATCH)  # 12: twice what the server holds at once
REQUESTS_PER_CLIENT = 4
WAVE_TIMEOUT_S = 240  # the whole wave; a hung request fails the test instead of hanging it
WAVES = 3
RSS_GROWTH_MB = 64  # allowed between the last two identical waves


def _client(base: str, image: bytes) -> list[tuple[int, dict, str]]:
    answers = []
    with httpx.Client(base_url=base, timeout=120) as client:
        for _ in range(REQUESTS_PER_CLIENT):
            r = client.post("/detect", files={"image": ("a.jpg", image, "image/jpeg")}, params={"max_detections": 5})
            answers.append((r.status_code, dict(r.headers), r.text))
    return answers


def _wave(base: str, image: bytes) -> Counter:
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(_client, base, image) for _ in range(CLIENTS)]
        done, not_done = wait(futures, timeout=WAVE_TIMEOUT_S)
        assert not not_done, f"{len(not_done)} clients still waiting after {WAVE_TIMEOUT_S} s"
    statuses = Counter()
    for future in done:
        for status, headers, text in future.result():
            statuses[status] += 1
            if status == 200:
                assert '"width":64' in text, text[:200]
            else:
                assert status == 503, (status, text)
                assert int(headers["retry-after"]) >= 1 and "busy" in text, (headers, text)
    assert sum(statuses.values()) == CLIENTS * REQUESTS_PER_CLIENT
    return statuses


def _answered(metrics_text: str) -> Counter:
    counts = Counter()
    for line in metrics_text.splitlines():
        if line.startswith('detector_requests_total{method="POST",route="/detect"'):
            status = int(line.split('status="')[1].split('"')[0])
            counts[status] += int(float(line.split()[-1]))
    return counts


@pytest.mark.slow
@pytest.mark.timeout(1200)  # its own bound: 3 waves of at most WAVE_TIMEOUT_S each
def test_twice_the_capacity_is_served_or_refused_at_once_and_memory_stays_flat(tmp_path):
    flags = ["--queue-size", str(QUEUE_SIZE), "--max-batch-size", str(MAX_BATCH), "--max-wait-ms", "20",
             "--request-timeout-s", "120", "--log-level", "warning"]  # fmt: skip
    image = jpeg(64, 48)
    with running(tmp_path, *flags) as server:
        server.wait_ready()
        httpx.post(f"{server.base}/detect", files={"image": ("a.jpg", image)}, timeout=60).raise_for_status()
        rss = [server.rss_mb()]
        waves = []
        for _ in range(WAVES):
            started = time.monotonic()
            waves.append(_wave(server.base, image))
            rss.append(server.rss_mb())
            tally.LOAD.append(
                f"{CLIENTS * REQUESTS_PER_CLIENT} requests, {CLIENTS} concurrent (queue {QUEUE_SIZE}, batch "
                f"{MAX_BATCH}): 200 x{waves[-1][200]}, 503 x{waves[-1][503]}, other 0, hung 0, "
                f"{time.monotonic() - started:.0f} s; RSS {rss[-2]:.0f} -> {rss[-1]:.0f} MB"
            )
        answered = _answered(server.get("/metrics").text)
        assert server.get("/readyz").status_code == 200
        exit_code = server.terminate()
    for statuses in waves:
        assert statuses[200] >= QUEUE_SIZE and statuses[503] > 0, statuses  # it really was overloaded
    # The server counted exactly what the clients saw: nothing lost, nothing answered twice.
    assert answered[200] == sum(w[200] for w in waves) + 1 and answered[503] == sum(w[503] for w in waves)
    assert rss[-1] - rss[-2] < RSS_GROWTH_MB, f"RSS grew from {rss[-2]:.0f} to {rss[-1]:.0f} MB over an identical wave"
    assert exit_code == 0, server.output()
    assert "Traceback" not in server.output(), server.output()

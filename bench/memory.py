"""Peak resident memory of ``python -m api`` (its defaults, the built-in model) under a burst of large requests.

    python bench/memory.py                                  # this checkout's code
    python bench/memory.py --code ../main --out before.json # another checkout's, same inputs

For each request kind, and for a mix of all of them, a fresh server starts on a loopback port; once it is
ready, ``--concurrency`` (8) clients send one ``--pixels`` (40 MP) image each, all at once. When every answer
is in, the server's peak resident memory (VmHWM of /proc/<pid>/status, Linux) is read, then it is stopped
with SIGTERM. Kinds: an RGB JPEG; a 16-bit grey PNG; an RGBA PNG; a palette PNG with a transparent entry;
polygon masks (``masks=polygon``); ``/detect/render``. Every request asks for every detection
(``score_threshold=0``), the most masks a client can make the server draw or trace.
Prints a table and writes JSON (with the CPU: ``bench/machine.py``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_info  # noqa: E402
from bench.server import api_process, free_port  # noqa: E402

GIB = 1024**3
ASPECT = 3 / 2  # width / height of the test images, a camera's


@dataclass(frozen=True)
class Kind:
    """One kind of request: what image is sent, where, with which options."""

    image: str  # a key of IMAGES
    path: str = "/detect"
    masks: str = "rle"


IMAGES = ("rgb_jpeg", "grey16_png", "rgba_png", "palette_png")
KINDS = {
    "rgb_jpeg": Kind("rgb_jpeg"),
    "grey16_png": Kind("grey16_png"),
    "rgba_png": Kind("rgba_png"),
    "palette_png": Kind("palette_png"),
    "polygon": Kind("rgb_jpeg", masks="polygon"),
    "render": Kind("rgb_jpeg", path="/detect/render"),
}
MIX = ("rgb_jpeg", "grey16_png", "rgba_png", "palette_png", "polygon", "render", "polygon", "render")


def image_size(pixels: int) -> tuple[int, int]:
    """(height, width) of a 3:2 image of at most ``pixels``."""
    height = int((pixels / ASPECT) ** 0.5)
    return height, min(int(height * ASPECT), pixels // height)


def scene(height: int, width: int) -> np.ndarray:
    """np.ndarray[H, W, 3] uint8: smooth gradients (they compress, so a 40 MP file fits a request) under
    large filled squares and discs of the model's classes, for it to find and mask."""
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[..., 0] = (60 + 120 * xs).astype(np.uint8)
    rgb[..., 1] = (60 + 120 * ys).astype(np.uint8)
    rgb[..., 2] = 90
    side = min(height, width) // 5
    rng = np.random.default_rng(0)
    for i in range(12):
        y, x = int(rng.integers(0, height - side)), int(rng.integers(0, width - side))
        colour = rng.integers(0, 256, 3).astype(np.uint8)
        if i % 2:
            rgb[y : y + side, x : x + side] = colour
        else:
            yy, xx = np.ogrid[:side, :side]
            disc = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 <= (side / 2) ** 2
            rgb[y : y + side, x : x + side][disc] = colour
    return rgb


def encode(name: str, rgb: np.ndarray) -> bytes:
    """The scene as the file of kind ``name`` (IMAGES)."""
    out = io.BytesIO()
    if name == "rgb_jpeg":
        Image.fromarray(rgb).save(out, format="JPEG", quality=90)
    elif name == "grey16_png":
        grey = rgb.mean(axis=2, dtype=np.float32) * 257  # (H, W) over 0..65535
        Image.fromarray(grey.astype(np.uint16)).save(out, format="PNG", compress_level=1)  # mode I;16
    elif name == "rgba_png":
        alpha = np.broadcast_to(np.linspace(64, 255, rgb.shape[1], dtype=np.float32).astype(np.uint8), rgb.shape[:2])
        Image.fromarray(np.dstack([rgb, alpha])).save(out, format="PNG", compress_level=1)
    elif name == "palette_png":
        index = (rgb[..., 0] // 32) * 32 + (rgb[..., 1] // 32) * 4 + rgb[..., 2] // 64  # 8 x 8 x 4 colours
        palette = Image.fromarray(index.astype(np.uint8), mode="P")
        levels = np.arange(256)
        palette.putpalette(np.stack([(levels // 32) * 32, (levels // 4 % 8) * 32, (levels % 4) * 64], 1).astype(np.uint8).ravel().tolist())
        palette.save(out, format="PNG", compress_level=1, transparency=0)
    else:
        raise ValueError(f"unknown image kind {name!r}; one of {IMAGES}")
    return out.getvalue()


def bodies(pixels: int, cache: Path | None = None) -> dict[str, bytes]:
    """Each of IMAGES at ``pixels``, cached as files in ``cache`` when given (making them takes a while)."""
    height, width = image_size(pixels)
    rgb = None
    out = {}
    for name in IMAGES:
        path = cache / f"{name}_{height}x{width}.bin" if cache is not None else None
        if path is not None and path.is_file():
            out[name] = path.read_bytes()
            continue
        rgb = scene(height, width) if rgb is None else rgb
        out[name] = encode(name, rgb)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(out[name])
    return out


def vm_bytes(pid: int, field: str = "VmHWM") -> int:
    """``field`` of /proc/<pid>/status in bytes: VmHWM the peak resident memory, VmRSS the current (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def kill_above(proc: subprocess.Popen, limit_bytes: float, stop: threading.Event, killed: list) -> None:
    """Kill ``proc`` if its resident memory passes ``limit_bytes`` (a shared machine's guard)."""
    while not stop.wait(0.05):
        try:
            if vm_bytes(proc.pid, "VmRSS") > limit_bytes:
                killed.append(vm_bytes(proc.pid, "VmHWM"))
                proc.kill()
                return
        except (OSError, RuntimeError):
            return


@contextmanager
def server(code: Path, log: Path, ready_timeout_s: float = 180.0) -> Iterator[tuple[subprocess.Popen, str]]:
    """``python -m api --port <free>`` from checkout ``code`` with its defaults; (process, base URL)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("DETECTOR_")}  # the defaults, nothing else
    with api_process([sys.executable, "-m", "api", "--port", str(port)], port, cwd=code, env=env,
                     ready_timeout_s=ready_timeout_s, log=log) as proc:
        yield proc, f"http://127.0.0.1:{port}"


def send(base: str, kind: Kind, body: bytes, timeout_s: float, max_detections: int = 100) -> int:
    """One request of ``kind``; its status (0: no answer)."""
    params = {"score_threshold": 0.0, "masks": kind.masks, "max_detections": max_detections}
    content_type = "image/jpeg" if kind.image.endswith("jpeg") else "image/png"
    try:
        response = httpx.post(f"{base}{kind.path}", params=params, content=body,
                              headers={"content-type": content_type}, timeout=timeout_s)
    except httpx.TransportError:
        return 0
    return response.status_code


def burst(code: Path, kinds: list[str], images: dict[str, bytes], log: Path, *, timeout_s: float = 600.0,
          max_detections: int = 100, kill_above_bytes: float = math.inf) -> dict:
    """One fresh server, ``len(kinds)`` requests at once; its peak memory before and after (or when it was
    killed for passing ``kill_above_bytes``)."""
    with server(code, log) as (proc, base):
        idle = vm_bytes(proc.pid)
        stop, killed = threading.Event(), []
        guard = threading.Thread(target=kill_above, args=(proc, kill_above_bytes, stop, killed), daemon=True)
        guard.start()
        began = time.monotonic()
        with ThreadPoolExecutor(len(kinds)) as pool:
            statuses = list(pool.map(
                lambda k: send(base, KINDS[k], images[KINDS[k].image], timeout_s, max_detections), kinds))
        seconds = time.monotonic() - began
        stop.set()
        guard.join()
        peak = killed[0] if killed else vm_bytes(proc.pid)
    return {"statuses": statuses, "seconds": round(seconds, 1), "idle_peak_mib": round(idle / 2**20),
            "peak_mib": round(peak / 2**20), "killed_above_limit": bool(killed), "under_3_gib": peak < 3 * GIB}


def _commit(code: Path) -> str | None:
    """The commit checked out in ``code`` (None outside a git checkout), with "+dirty" for local changes."""
    try:
        head = subprocess.run(["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose `python -m api` runs")
    parser.add_argument("--pixels", type=int, default=40_000_000, help="pixels per image (the default max_pixels)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests at once")
    parser.add_argument("--kinds", nargs="+", default=[*KINDS, "mix"], choices=[*KINDS, "mix"])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/detector-bench-memory"), help="where the images are kept")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take")
    parser.add_argument("--max-detections", type=int, default=100, help="asked of each request (the API's default)")
    parser.add_argument("--kill-above-gib", type=float, default=10.0,
                        help="kill a server whose resident memory passes this (a shared machine's guard)")
    parser.add_argument("--out", type=Path, default=None, help="the JSON file to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    images = bodies(args.pixels, args.cache)
    height, width = image_size(args.pixels)
    result = {"code": str(args.code.resolve()), "commit": _commit(args.code), "image": f"{width}x{height}", "concurrency": args.concurrency,
              "body_bytes": {name: len(body) for name, body in images.items()}, "cpu": cpu_info(), "runs": {}}
    print(f"{'kind':<12} {'statuses':<34} {'idle MiB':>9} {'peak MiB':>9} {'s':>6}")
    for name in args.kinds:
        kinds = [MIX[i % len(MIX)] for i in range(args.concurrency)] if name == "mix" else [name] * args.concurrency
        run = burst(args.code, kinds, images, args.cache / f"server-{name}-{os.getpid()}.log", timeout_s=args.timeout,
                    max_detections=args.max_detections, kill_above_bytes=args.kill_above_gib * GIB)
        result["runs"][name] = {"requests": kinds, "max_detections": args.max_detections, **run}
        killed = " (killed: past --kill-above-gib)" if run["killed_above_limit"] else ""
        print(f"{name:<12} {','.join(map(str, run['statuses'])):<34} {run['idle_peak_mib']:>9} {run['peak_mib']:>9} "
              f"{run['seconds']:>6}{killed}")
    text = json.dumps(result, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

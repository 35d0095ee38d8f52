"""The GPU check, one command (``make gpu-check``): what a CUDA machine lent for a few minutes must measure.

    python bench/gpu_check.py                      # CUDA when there is one, else the tiny CPU mode
    python bench/gpu_check.py --tiny               # the tiny CPU mode anywhere (CI runs it: it cannot rot)

Four steps, in this order, each within its share of ``--budget-s`` (default 480 s: a step past its share is
stopped and recorded as such, and the next one runs; the summary is rewritten after every step, so that even
a hard timeout leaves what was measured):

1. ``tests``: ``pytest -m cuda`` (tests/detector/test_cuda.py): the exact mode on CUDA against the CPU, the
   speed modes and float16 autocast on CUDA. Without CUDA they skip (a GPU is hardware, not an input CI
   provides: a plain skip, not ``tests/inputs.py``'s ``missing_input``, which fails under CI=true).
2. ``drift``: the same comparisons measured: each mode on the device against the exact mode on the CPU, on
   the built-in model (trained weights, so that its detections are real ones) and the sample image at three
   sizes: the fraction of detections matched and the largest score and box differences (``bench.engine.compare``).
3. ``engine``: bench/engine.py at batch 1, 4, 8 and 16 (Mask R-CNN R50-FPN at 800 x 1216, torchvision's
   model and our exact, fast and bf16 modes), one process per batch size, rows merged.
4. ``server``: bench/server.py against ``python -m api`` at concurrency 1 to 64, batching on (up to 16 images
   a pass), off, and on with ``--batch-by-size`` and ``--cudnn-benchmark``, with images of several sizes (so
   that batches split by padded size show); the Mask R-CNN weights are bench/reference.py's random ones
   (each image gives many detections), saved to a file.

Writes ``gpu_check.json`` (machine, GPU, each step's status, the tests' counts, the drift), ``gpu_engine.json``
and ``gpu_server.json`` into ``--out-dir`` (default: bench/results on CUDA; build/gpu-check-tiny in the tiny
mode, whose figures are no measurement). Exit status 0 when every step ran and every test passed or skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import commit, cpu_info  # noqa: E402

STEPS = ("tests", "drift", "engine", "server")


@dataclass(frozen=True)
class Plan:
    """What a run measures: the full check on CUDA, or the tiny mode on the CPU (small model, small images,
    few iterations: the same code paths, in a minute or two)."""

    device: str
    budget_s: dict[str, float]  # step -> its share of the time, in seconds
    drift_modes: tuple[str, ...]  # DRIFT_MODES keys
    drift_sizes: tuple[int, ...]  # shorter side of the sample image, resized, per image
    engine_model: str
    engine_size: tuple[int, int]
    engine_batches: tuple[int, ...]
    engine_modes: tuple[str, ...]
    engine_repeat: int
    server_preset: str
    server_image_sizes: tuple[tuple[int, int], ...]
    server_concurrency: tuple[int, ...]
    server_max_batch: int
    server_seconds: float  # per concurrency level, at most
    threads: int | None  # torch CPU threads (None: torch's default)


# The shares add up to 480 s (8 minutes), the check's bound on a GPU.
FULL = Plan(
    device="cuda", budget_s={"tests": 60, "drift": 45, "engine": 170, "server": 205},
    drift_modes=("exact", "exact_tf32", "fast", "bf16", "fp16_autocast"), drift_sizes=(800, 600, 480),
    engine_model="maskrcnn_r50_fpn", engine_size=(800, 1216), engine_batches=(1, 4, 8, 16),
    engine_modes=("exact", "fast", "bf16"), engine_repeat=3,
    server_preset="maskrcnn_r50_fpn", server_image_sizes=((480, 640), (640, 480), (427, 640), (800, 1216)),
    server_concurrency=(1, 2, 4, 8, 16, 32, 64), server_max_batch=16, server_seconds=5.0, threads=None,
)
TINY = Plan(
    device="cpu", budget_s={"tests": 60, "drift": 60, "engine": 120, "server": 180},
    drift_modes=("exact", "fast"), drift_sizes=(96, 64),
    engine_model="small_r18_fpn", engine_size=(64, 96), engine_batches=(1, 2), engine_modes=("exact", "fast"),
    engine_repeat=0,
    server_preset="small_r18_fpn", server_image_sizes=((48, 64), (64, 48)), server_concurrency=(1, 2),
    server_max_batch=2, server_seconds=3.0, threads=1,
)

# How each drift mode runs on the device: (speed, TF32 convolutions allowed, float16 autocast around predict).
# "exact" turns TF32 off (cuDNN's default is on for convolutions): then only the kernels' own rounding differs
# from the CPU's. "fp16_autocast" is what a user gets from torch.autocast(float16) around the exact model.
DRIFT_MODES = {
    "exact": ("exact", False, False),
    "exact_tf32": ("exact", True, False),
    "fast": ("fast", True, False),
    "bf16": ("bf16", True, False),
    "fp16_autocast": ("exact", True, True),
}


class Check:
    """Runs the steps into ``out_dir`` and keeps the summary (``gpu_check.json``) up to date."""

    def __init__(self, plan: Plan, out_dir: Path, tiny: bool) -> None:
        self.plan, self.out_dir = plan, out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.summary = {"mode": "tiny-cpu" if tiny else "full", "plan": asdict(self.plan), "machine": machine(),
                        "commit": commit(), "steps": {}}

    def run(self, steps: tuple[str, ...]) -> bool:
        ok = True
        for step in steps:
            started = time.monotonic()
            log(f"step {step}: at most {self.plan.budget_s[step]:g} s")
            try:
                result = getattr(self, f"_{step}")(self.plan.budget_s[step])
            except Exception as exc:  # noqa: BLE001 - one step failing must not stop the others
                result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            result["seconds"] = round(time.monotonic() - started, 1)
            self.summary["steps"][step] = result
            ok = ok and result["status"] == "ok"
            self.write("gpu_check.json", self.summary)
            log(f"step {step}: {result['status']} in {result['seconds']:g} s")
        return ok

    def write(self, name: str, data: dict) -> Path:
        path = self.out_dir / name
        path.write_text(json.dumps(data, indent=1))
        return path

    def _tests(self, budget_s: float) -> dict:
        junit = self.out_dir / "gpu_tests.junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs",
                   f"--junitxml={junit}", "tests/detector/test_cuda.py"]
        proc = run(command, budget_s)
        counts = junit_counts(junit) if junit.is_file() else {}
        junit.unlink(missing_ok=True)
        status = "timeout" if proc is None else "ok" if proc.returncode in (0, 5) and counts else "failed"
        return {"status": status, **counts, "returncode": None if proc is None else proc.returncode,
                "tail": "" if proc is None else proc.stdout[-2000:]}

    def _drift(self, budget_s: float) -> dict:
        out = self.out_dir / "gpu_drift.part.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--drift-only", "--device", self.plan.device,
                   "--out-dir", str(self.out_dir), "--drift-modes", *self.plan.drift_modes,
                   "--drift-sizes", *map(str, self.plan.drift_sizes)]
        proc = run(command, budget_s)
        if proc is None or not out.is_file():
            return {"status": "timeout" if proc is None else "failed", "tail": "" if proc is None else proc.stdout[-2000:]}
        drift = json.loads(out.read_text())
        out.unlink()
        return {"status": "ok", **drift}

    def _engine(self, budget_s: float) -> dict:
        plan, deadline, rows, env, done = self.plan, time.monotonic() + budget_s, [], {}, []
        for batch in plan.engine_batches:
            left = deadline - time.monotonic()
            if left <= 5:
                break
            part = self.out_dir / f"gpu_engine_b{batch}.part.json"
            command = [sys.executable, "bench/engine.py", "--models", plan.engine_model, "--batches", str(batch),
                       "--size", *map(str, plan.engine_size), "--modes", *plan.engine_modes, "--device", plan.device,
                       "--repeat", str(plan.engine_repeat), "--json", str(part)]
            if plan.threads is not None:
                command += ["--threads", str(plan.threads)]
            proc = run(command, left)
            if proc is None or proc.returncode != 0 or not part.is_file():
                log(f"engine at batch {batch}: {'timed out' if proc is None else proc.stdout[-2000:]}")
                break
            data = json.loads(part.read_text())
            part.unlink()
            rows += data.pop("rows")
            env = data
            done.append(batch)
        self.write("gpu_engine.json", {**env, "machine": self.summary["machine"], "commit": self.summary["commit"],
                                       "rows": rows})
        status = "ok" if done == list(plan.engine_batches) else "timeout" if done else "failed"
        return {"status": status, "batches": done, "json": "gpu_engine.json"}

    def _server(self, budget_s: float) -> dict:
        plan = self.plan
        part = self.out_dir / "gpu_server.part.json"
        server = f"--preset {plan.server_preset} --device {plan.device} --queue-size 256 --limit-concurrency 400"
        weights = None
        if plan.server_preset == "maskrcnn_r50_fpn":  # no built-in weights: random ones with many detections
            weights = reference_weights(plan.server_preset, self.out_dir / "reference_maskrcnn.safetensors")
            server += f" --weights {weights}"
        batched = f"{server} --max-batch-size {plan.server_max_batch}"
        # Batching on, off, and on with batches of one padded size and cuDNN's algorithms timed per shape.
        spawns = [batched, f"{server} --max-batch-size 1", f"{batched} --batch-by-size true --cudnn-benchmark true"]
        sizes = [f"{h}x{w}" for h, w in plan.server_image_sizes]
        per_level = plan.server_seconds
        command = [sys.executable, "bench/server.py", *[f"--spawn={s}" for s in spawns],
                   "--concurrency", *map(str, plan.server_concurrency), "--requests", "100000",
                   "--max-seconds", str(per_level), "--image-sizes", *sizes, "--engine-runs", "0",
                   "--json", str(part)]
        if plan.threads is not None:
            command += ["--threads", str(plan.threads)]
        try:
            proc = run(command, budget_s)
        finally:
            if weights is not None:
                weights.unlink(missing_ok=True)
        if proc is None or proc.returncode != 0 or not part.is_file():
            return {"status": "timeout" if proc is None else "failed", "tail": "" if proc is None else proc.stdout[-3000:]}
        data = json.loads(part.read_text())
        part.unlink()
        self.write("gpu_server.json", {**data, "machine": self.summary["machine"], "commit": self.summary["commit"]})
        best = {run_["server_args"]: max(r["requests_per_s"] for r in run_["rows"]) for run_ in data["runs"]}
        return {"status": "ok", "best_requests_per_s": best, "json": "gpu_server.json"}


def machine() -> dict:
    """bench/machine.py's CPU facts and the Python, torch and torchvision versions (a lent machine's are not
    pyproject's), with the GPU's name, capability, memory and driver where CUDA is."""
    import torch
    import torchvision

    info = {"cpu": cpu_info(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "cuda_runtime": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
                       "driver": _nvidia_driver()}
    return info


def _nvidia_driver() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run(command: list[str], timeout_s: float) -> subprocess.CompletedProcess | None:
    """``command`` in the repository root, its output (stdout and stderr) echoed and captured; None when it
    ran past ``timeout_s`` (then it is killed, with its children). Output is read as it comes, not by
    lines: a hung test after pytest's progress dots still times out."""
    log("$ " + " ".join(command))
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.killpg(proc.pid, 9)
                proc.wait()
                return None
            if sel.select(timeout=min(left, 1.0)):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                chunks.append(chunk)
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
    proc.wait()
    return subprocess.CompletedProcess(command, proc.returncode, b"".join(chunks).decode(errors="replace"))


def junit_counts(path: Path) -> dict:
    """{"tests", "passed", "failed", "skipped", "skip_reasons"} of a pytest JUnit XML report."""
    root = ET.parse(path).getroot()
    cases = list(root.iter("testcase"))
    failed = sum(1 for c in cases if c.find("failure") is not None or c.find("error") is not None)
    skips = [c.find("skipped") for c in cases if c.find("skipped") is not None]
    reasons = sorted({s.get("message", "") for s in skips})
    return {"tests": len(cases), "passed": len(cases) - failed - len(skips), "failed": failed, "skipped": len(skips),
            "skip_reasons": reasons}


def reference_weights(preset: str, path: Path) -> Path:
    """bench/reference.py's random torchvision weights for ``preset``, in our layout, saved to ``path``."""
    from bench.engine import build_pair
    from detector.weights.loading import save_weights

    import torch

    _, ours = build_pair(preset, (800, 1333), torch.device("cpu"))
    save_weights(ours, path)
    return path


def measure_drift(device: str, modes: tuple[str, ...], sizes: tuple[int, ...]) -> dict:
    """Each mode of ``DRIFT_MODES`` on ``device`` against the exact mode on the CPU: the built-in model on the
    sample image resized to each shorter side in ``sizes`` (one batch of them all: different padded sizes)."""
    import numpy as np
    import torch
    from PIL import Image

    from bench.engine import compare
    from detector.predictor import Predictor
    from detector.weights.builtin import builtin_file

    sample = Image.open(builtin_file("sample.png")).convert("RGB")
    images = []
    for side in sizes:
        scale = side / min(sample.size)
        images.append(np.asarray(sample.resize((round(sample.width * scale), round(sample.height * scale)))))
    reference = Predictor.from_preset(None, speed="exact").predict(images)
    out = {"model": "built-in", "image_sizes": [list(i.shape[:2]) for i in images],
           "reference": "exact on the CPU", "detections": [len(d) for d in reference], "modes": {}}
    for mode in modes:
        speed, tf32, fp16 = DRIFT_MODES[mode]
        try:
            predictor = Predictor.from_preset(None, device=device, speed=speed)
            with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=tf32), \
                    torch.autocast(torch.device(device).type, dtype=torch.float16, enabled=fp16):
                predictor.predict(images)  # warm-up
                started = time.perf_counter()
                dets = predictor.predict(images)
                seconds = time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - a mode that fails is a finding: recorded, the others measured
            out["modes"][mode] = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            out["modes"][mode] = {**compare(reference, dets), "detections": [len(d) for d in dets],
                                  "seconds": round(seconds, 4)}
        log(f"drift {mode}: {out['modes'][mode]}")
    return out


def log(message: str) -> None:
    print(f"[gpu-check] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="the tiny CPU mode, even where CUDA is")
    p.add_argument("--out-dir", type=Path, help="default: bench/results (full), build/gpu-check-tiny (tiny)")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every step's share of the time")
    # The drift step runs in a process of its own (a CUDA failure there must not end the check):
    p.add_argument("--drift-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    p.add_argument("--drift-modes", nargs="+", choices=list(DRIFT_MODES), help=argparse.SUPPRESS)
    p.add_argument("--drift-sizes", nargs="+", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.drift_only:
        drift = measure_drift(args.device, tuple(args.drift_modes), tuple(args.drift_sizes))
        (args.out_dir / "gpu_drift.part.json").write_text(json.dumps(drift, indent=1))
        return 0

    import torch

    tiny = args.tiny or not torch.cuda.is_available()
    plan = TINY if tiny else FULL
    plan = Plan(**{**asdict(plan), "budget_s": {k: v * args.budget_scale for k, v in plan.budget_s.items()}})
    out_dir = args.out_dir or (ROOT / "build" / "gpu-check-tiny" if tiny else ROOT / "bench" / "results")
    if tiny:
        log("no CUDA device (or --tiny): the tiny CPU mode, to keep the check from rotting; its figures are no measurement")
    check = Check(plan, out_dir, tiny)
    ok = check.run(tuple(s for s in STEPS if s in args.steps))
    log(f"wrote {out_dir / 'gpu_check.json'}: {'every step ran' if ok else 'a step failed or timed out'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

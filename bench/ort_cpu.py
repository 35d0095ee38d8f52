"""onnxruntime on the CPU against our torch backend, on identical weights and images: the exported file
(``python -m detector.export``) run by ``OnnxPredictor`` beside ``Predictor`` at ``--speed exact`` and
``fast``, end to end (masks as COCO RLE, as a service answers).

    python bench/ort_cpu.py --models maskrcnn_r50_fpn --size 800 1216 --batches 1
    python bench/ort_cpu.py --models small_r18_fpn --size 480 640 --batches 1 4

The R50 presets get bench/reference.py's random weights (torchvision's COCO layout, as bench/engine.py);
small_r18_fpn its built-in weights. The three backends run in this one process, taking turns within each
repetition (the first is a warm-up), with freed memory kept (``detector.memory``, as the CLIs and the
service do). Each row is compared with exact (bench/engine.py's ``compare``: detections matched at IoU >
0.9 with the same label, and the largest score and box differences). The export's own time is reported
too. Prints a table and writes JSON. (Not named bench/onnx.py: run as a script, that would shadow the onnx
package.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.engine import TORCHVISION_MODELS, build_pair, compare  # noqa: E402
from bench.machine import commit, cpu_info  # noqa: E402
from detector.export.onnx_file import OPSET, export_onnx  # noqa: E402
from detector.export.runtime import OnnxPredictor  # noqa: E402
from detector.memory import keep_freed_memory  # noqa: E402
from detector.predictor import Predictor  # noqa: E402

IMPLS = ("exact", "fast", "onnxruntime")


def _model(preset: str, size: tuple[int, int]):
    if preset in TORCHVISION_MODELS:
        return build_pair(preset, size, torch.device("cpu"))[1]
    return Predictor.from_preset(preset, speed="exact").model


def bench_model(preset: str, size: tuple[int, int], batches: list[int], repeat: int, workdir: Path,
                threads: int | None = None) -> list[dict]:
    model = _model(preset, size)
    start = time.perf_counter()
    path = export_onnx(model, workdir / f"{preset}.onnx", name=preset)
    export_s = time.perf_counter() - start
    predictors = {"exact": Predictor(model, speed="exact"), "fast": Predictor(model, speed="fast"),
                  "onnxruntime": OnnxPredictor(path, threads=threads)}
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        images = [(rng.random((*size, 3)) * 255).astype(np.uint8) for _ in range(batch)]
        runs, last = {impl: [] for impl in IMPLS}, {}
        for _ in range(repeat + 1):
            for impl, predictor in predictors.items():
                t = time.perf_counter()
                dets = predictor.predict(images)
                for d in dets:
                    if d.mask_probs is not None:
                        d.rle_masks()
                runs[impl].append(time.perf_counter() - t)
                last[impl] = dets
        for impl in IMPLS:
            timed = runs[impl][1:] or runs[impl]
            row = {"model": preset, "batch": batch, "size": list(size), "impl": impl, "threads": torch.get_num_threads(),
                   "total_s": round(statistics.median(timed), 4), "runs_s": [round(r, 4) for r in timed],
                   "detections": [len(d) for d in last[impl]]}
            if impl != "exact":
                row["vs_exact"] = compare(last["exact"], last[impl])
                row["speedup_vs_exact"] = round(statistics.median(e / r for e, r in zip(runs["exact"][1:] or runs["exact"], timed)), 3)
            if impl == "onnxruntime":
                row["export_s"] = round(export_s, 1)
                row["onnx_mb"] = round(path.stat().st_size / 2**20, 1)
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'model':<20} {'batch':>5} {'impl':<12} {'total s':>8} {'vs exact':>8} {'matched':>8} {'max box px':>10}"]
    for r in rows:
        vs = r.get("vs_exact", {})
        lines.append(f"{r['model']:<20} {r['batch']:>5} {r['impl']:<12} {r['total_s']:>8.3f} "
                     f"{r.get('speedup_vs_exact', 1.0):>7.2f}x {vs.get('matched', 1.0):>8.4f} {vs.get('max_box_diff_px', 0.0):>10.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["maskrcnn_r50_fpn"])
    p.add_argument("--size", nargs=2, type=int, default=[800, 1216], metavar=("H", "W"))
    p.add_argument("--batches", nargs="+", type=int, default=[1])
    p.add_argument("--repeat", type=int, default=3, help="timed runs after one warm-up")
    p.add_argument("--threads", type=int, default=None, help="torch's and onnxruntime's (default: theirs)")
    p.add_argument("--json", type=Path, default=Path("bench/results/ort_cpu.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for preset in args.models:
            rows += bench_model(preset, tuple(args.size), args.batches, args.repeat, Path(workdir), args.threads)
    print(format_table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "opset": OPSET, "cpu": cpu_info(), "commit": commit(),
                                     "onnxruntime": __import__("onnxruntime").__version__,
                                     "torch": torch.__version__}, indent=1))
    print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

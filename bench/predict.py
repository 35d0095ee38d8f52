"""Images per second of ``python -m detector.predict``'s loop against a plain loop over ``Predictor.predict``.

    python bench/predict.py                                   # small_r18_fpn, 32 generated JPEGs
    python bench/predict.py --images 64 --batches 1 4 --workers 1 2 4 --threads 2

Both loops take the same files and the same loaded Predictor, and write the same JSON line per image
(``Predictor.to_json``, masks as RLE, detections scoring 0.5 or more) to a file:
- plain: for each batch, in order: read each file (``read_image``), ``predict``, write the lines;
- cli: ``detector.prediction.run.predict_files``, what the CLI runs: decoding in a pool of threads ahead
  of the model, batches by size bucket, each line flushed as it is written (no progress bar).
A third row times decoding alone (``read_image`` of every file, one thread): the share of the work
that the pool can take off the model's path. The files are generated JPEGs in COCO's common sizes
(640x480, 480x640, 640x427, 500x375, ...), smooth noise that compresses as photos do. Model loading is
not timed. The loops take turns, ``--repeat`` times after one warm-up pass; the median is reported.
Prints a table and writes JSON with the CPU (``bench/machine.py``), default bench/results/predict_small.json.
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import commit, cpu_info  # noqa: E402
from detector.data.images import read_image  # noqa: E402
from detector.prediction.jsonl import LineWriter  # noqa: E402
from detector.prediction.run import detector_entries, predict_files  # noqa: E402
from detector.predictor import Predictor  # noqa: E402

SCORE_THRESHOLD = 0.5  # predict's default, in both loops
SIZES = [(480, 640), (640, 480), (427, 640), (375, 500), (640, 427), (480, 640), (500, 375), (612, 612)]


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of SIZES (H, W) in turn: noise at 1/8 scale, enlarged, so it compresses like a photo."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        h, w = SIZES[i % len(SIZES)]
        small = Image.fromarray(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8))
        paths.append(folder / f"{i:05d}.jpg")
        small.resize((w, h), Image.BILINEAR).save(paths[-1], quality=90)
    return paths


def plain_loop(predictor: Predictor, paths: list[Path], out: Path, batch_size: int) -> None:
    with out.open("w") as f:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            for path, det in zip(batch, predictor.predict([read_image(p) for p in batch])):
                det = det[det.scores >= SCORE_THRESHOLD]
                f.write(json.dumps({"file": str(path), **predictor.to_json(det, masks="rle")}) + "\n")


def cli_loop(predictor: Predictor, paths: list[Path], out: Path, batch_size: int, workers: int) -> None:
    out.unlink(missing_ok=True)
    with LineWriter(out) as writer:
        predict_files(predictor, paths, writer, detector_entries(predictor, "rle"), score_threshold=SCORE_THRESHOLD,
                      batch_size=batch_size, workers=workers, progress=False)


def measure(args: argparse.Namespace, predictor: Predictor, paths: list[Path], work: Path) -> list[dict]:
    runs = [("plain", b, None) for b in args.batches] + [("cli", b, w) for b in args.batches for w in args.workers]
    runs.append(("decode", None, None))
    seconds: dict[tuple, list[float]] = {run: [] for run in runs}
    for turn in range(args.repeat + 1):  # turn 0 warms up
        for loop, batch, workers in runs:
            start = time.perf_counter()
            if loop == "plain":
                plain_loop(predictor, paths, work / "plain.jsonl", batch)
            elif loop == "cli":
                cli_loop(predictor, paths, work / "cli.jsonl", batch, workers)
            else:
                [read_image(p) for p in paths]
            if turn:
                seconds[loop, batch, workers].append(time.perf_counter() - start)
    plain = {b: statistics.median(seconds["plain", b, None]) for b in args.batches}
    return [{"loop": loop, "batch_size": batch, "workers": workers, "seconds": seconds[loop, batch, workers],
             "images_per_s": round(len(paths) / statistics.median(seconds[loop, batch, workers]), 2),
             "vs_plain": round(plain[batch] / statistics.median(seconds[loop, batch, workers]), 2) if batch else None}
            for loop, batch, workers in runs]


def format_table(rows: list[dict]) -> str:
    lines = [f"{'loop':<6} {'batch':>5} {'workers':>7} {'img/s':>7} {'vs plain':>8}"]
    for r in rows:
        vs_plain = f"{r['vs_plain']:>8.2f}" if r["vs_plain"] else f"{'-':>8}"
        lines.append(f"{r['loop']:<6} {r['batch_size'] or '-':>5} {r['workers'] or '-':>7} {r['images_per_s']:>7.2f} "
                     f"{vs_plain}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="small_r18_fpn")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    p.add_argument("--workers", nargs="+", type=int, default=[2], help="decoding threads of the cli loop")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--repeat", type=int, default=3, help="timed passes of each loop after one warm-up")
    p.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "predict_small.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_preset(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = make_images(work, args.images)
        rows = measure(args, predictor, paths, work)
    print(format_table(rows))
    report = {"model": args.model, "images": args.images, "sizes_hw": SIZES, "threads": args.threads,
              "repeat": args.repeat, "speed": predictor.speed,
              "torch": torch.__version__, "cpu": cpu_info(), "commit": commit(), "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

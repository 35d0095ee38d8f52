"""A training recipe's COCO AP against its training time: is the next change to the recipe better?

    python bench/train.py --out runs/recipe --stops 1000 2000 4000            # the built-in recipe
    python bench/train.py --out runs/lr04 --stops 1000 2000 -- --lr 0.04       # the same with one change

Runs ``python -m detector.train [ARGS after --] --out OUT --stop-at S`` for each stop S in turn, each part
resuming the one before (``--resume``), so one schedule (the length ``--iters``, or the recipe's) is cut
into parts without changing it; after each part ``python -m detector.eval`` scores ``OUT/last.pth`` on the
validation set, in the default speed mode (after the last part of a whole schedule, the final weights instead,
the file that ships). The clock counts the training processes only, start-up
included, evaluation not. With no data set in ARGS, the training command uses the built-in synthetic set
and this script its validation split. Prints a table and writes JSON (``--json``) with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import commit, cpu_info  # noqa: E402

IOU_TYPES = ("bbox", "segm", "keypoints")


def _training_args(train_args: list[str]) -> argparse.Namespace:
    """The training command's arguments as ``python -m detector.train`` parses them (torch-free)."""
    from detector.train import build_parser as training_parser  # noqa: PLC0415

    return training_parser().parse_args(train_args)


def validation_set(train_args: list[str]) -> tuple[Path, Path]:
    """(images folder, annotation file) the recipe is scored on: ``--val-images``/``--val-ann`` of the
    training command, else the built-in synthetic set's validation split (its ``--synthetic-dir``)."""
    args = _training_args(train_args)
    if (args.val_images is None) != (args.val_ann is None):  # detector.train's main checks this, not its parser
        raise ValueError("give both --val-images and --val-ann to the training command, or neither")
    if args.val_ann is not None:
        return args.val_images, args.val_ann
    if args.train_ann is not None:
        raise ValueError("a training command with its own data set needs --val-images and --val-ann to be scored")
    from detector.data.synthetic import ensure_synthetic  # noqa: PLC0415
    from detector.train import SYNTHETIC  # noqa: PLC0415

    paths = ensure_synthetic(args.synthetic_dir, **SYNTHETIC)
    return paths.val_images, paths.val_annotations


def run_part(train_args: list[str], out: Path, stop: int, resume: bool, log) -> float:
    """Train up to iteration ``stop``; the part's wall-clock seconds. RuntimeError when training fails."""
    cmd = [sys.executable, "-m", "detector.train", *train_args, "--out", str(out), "--stop-at", str(stop),
           "--no-progress", *(["--resume"] if resume else [])]
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"training stopped with exit status {done.returncode} before iteration {stop}: "
                           f"see {log.name}")
    return seconds


def scored_file(out: Path, part_started: float) -> Path:
    """What a stop scores: the schedule's final weights where this part wrote them (the file that ships, which
    names its model and the size it was trained to, as ``python -m detector.eval`` runs it), else
    ``last.pth`` (a checkpoint, scored at the preset's size)."""
    from detector.training.checkpoint import CHECKPOINT_NAME  # noqa: PLC0415 (torch: imported once trained)
    from detector.training.loop import FINAL_WEIGHTS_NAME  # noqa: PLC0415

    final = out / FINAL_WEIGHTS_NAME
    return final if final.is_file() and final.stat().st_mtime >= part_started else out / CHECKPOINT_NAME


def score(weights: Path, stop: int, val: tuple[Path, Path], model: str | None, log) -> dict[str, float]:
    """AP of ``weights`` by iou type, as ``python -m detector.eval`` measures it."""
    metrics = weights.parent / f"eval_{stop}.json"
    cmd = [sys.executable, "-m", "detector.eval", "--weights", str(weights), "--ann", str(val[1]),
           "--images", str(val[0]), "--metrics-out", str(metrics), *(["--model", model] if model else [])]
    done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"evaluation at iteration {stop} failed with exit status {done.returncode}: see {log.name}")
    stats = json.loads(metrics.read_text())
    return {t: round(stats[t]["AP"], 4) for t in IOU_TYPES if t in stats}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the training run's folder (OUT of detector.train)")
    p.add_argument("--stops", type=int, nargs="+", required=True, metavar="ITER",
                   help="iterations after which to score the model (increasing; the last ends the run there)")
    p.add_argument("--resume", action="store_true", help="OUT already holds the run: go on from its last.pth")
    p.add_argument("--json", type=Path, help="default: OUT/recipe.json")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the arguments of python -m detector.train")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if "--out" in train_args or "--stop-at" in train_args or "--resume" in train_args:
        raise SystemExit("error: --out, --stop-at and --resume are this script's to set, not the training command's")
    if sorted(set(args.stops)) != args.stops or args.stops[0] < 1:
        raise SystemExit(f"error: --stops must increase from 1 or more, got {args.stops}")
    val = None  # found after the first part: generating the synthetic set is the training's time
    args.out.mkdir(parents=True, exist_ok=True)
    model = _training_args(train_args).model  # exits on a bad training command, before any part runs
    rows, total = [], 0.0
    print(f"{'iteration':>9} {'minutes':>8} " + " ".join(f"{t:>9}" for t in IOU_TYPES))
    with open(args.out / "recipe.log", "a") as log:
        for i, stop in enumerate(args.stops):
            started = time.time()
            total += run_part(train_args, args.out, stop, resume=args.resume or i > 0, log=log)
            val = val or validation_set(train_args)
            weights = scored_file(args.out, started)
            ap = score(weights, stop, val, model, log)
            rows.append({"iteration": stop, "train_minutes": round(total / 60, 2), "scored": weights.name, "ap": ap})
            print(f"{stop:>9} {total / 60:>8.1f} " + " ".join(f"{ap.get(t, float('nan')):>9.3f}" for t in IOU_TYPES),
                  flush=True)
    result = {"command": ["python", "-m", "detector.train", *train_args, "--out", str(args.out)],
              "validation": {"images": str(val[0]), "annotations": str(val[1])}, "rows": rows,
              "resumed": args.resume, "threads": os.environ.get("OMP_NUM_THREADS"), "cpu": cpu_info(),
              "commit": commit()}
    path = args.json or args.out / "recipe.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

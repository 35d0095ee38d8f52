"""Seconds per training step of a preset and of variants of it, on the built-in synthetic set: what a
change to the heads or the sampling costs or saves before a whole recipe is trained with it.

    python bench/train_step.py --threads 2 \
        --variant "mask cap 8: mask.train_rois_per_image=8" \
        --variant "mask cap 8, 64 channels: mask.train_rois_per_image=8 mask.conv_dim=64"

Each variant is the preset with fields of its config replaced (``part.field=value``, a Python literal),
trained by ``detector.training.loop.Trainer`` as ``python -m detector.train`` would (its recipe: sizes,
flips, sampling, clipping), from the built-in weights where their shapes fit (trained weights propose and
sample as a trained model does; a random start would time the first steps of a run only). All variants
see the same batches, and take turns at every step, so that a shared machine's load falls on all alike.
Prints a table (mean, median, min, max over the timed steps) and writes JSON with the machine.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import commit, cpu_info  # noqa: E402
from detector.modeling.presets import get_preset  # noqa: E402
from detector.modeling.rcnn import ModelConfig  # noqa: E402
from detector.training.loop import TrainConfig, Trainer  # noqa: E402


def with_changes(cfg: ModelConfig, changes: list[str]) -> ModelConfig:
    """``cfg`` with each ``part.field=value`` (e.g. ``mask.conv_dim=64``) applied; ValueError for an
    unknown part or field, or a value that is not a Python literal."""
    for change in changes:
        path, sep, text = change.partition("=")
        part, dot, name = path.partition(".")
        if not sep or not dot:
            raise ValueError(f"a change is part.field=value, got {change!r}")
        sub = getattr(cfg, part, None)
        if not is_dataclass(sub):
            raise ValueError(f"{change!r}: the config has no part {part!r}")
        if name not in {f.name for f in fields(sub)}:
            raise ValueError(f"{change!r}: {part} has no field {name!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"{change!r}: {text!r} is not a Python literal") from None
        cfg = replace(cfg, **{part: replace(sub, **{name: value})})
    return cfg


def parse_variant(text: str) -> tuple[str, list[str]]:
    """"name: part.field=value ..." -> (name, changes)."""
    name, sep, changes = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"a variant is 'name: part.field=value ...', got {text!r}")
    return name.strip(), changes.split()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small_r18_fpn")
    p.add_argument("--variant", action="append", default=[], metavar="'NAME: part.field=value ...'",
                   help="a variant of the preset (repeatable); the preset itself is always measured")
    p.add_argument("--weights", default="weights/small_r18_fpn.safetensors",
                   help="start from these weights where their shapes fit ('' for a random start)")
    p.add_argument("--synthetic-dir", type=Path, default=Path("data/synthetic"),
                   help="the built-in synthetic set, generated here if missing")
    p.add_argument("--train-images", type=Path, help="another COCO-format set instead (with --train-ann)")
    p.add_argument("--train-ann", type=Path)
    p.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if (args.train_images is None) != (args.train_ann is None):
        p.error("give both --train-images and --train-ann, or neither")
    if args.train_ann is None:
        from detector.data.synthetic import ensure_synthetic  # noqa: PLC0415
        from detector.train import SYNTHETIC  # noqa: PLC0415

        data = ensure_synthetic(args.synthetic_dir, **SYNTHETIC)
        args.train_images, args.train_ann = data.train_images, data.train_annotations
    variants = [("preset", [])] + [parse_variant(v) for v in args.variant]
    base = get_preset(args.preset)
    weights = Path(args.weights) if args.weights else None
    if weights is not None and not weights.is_file():
        p.error(f"{weights}: no such file (--weights '' for a random start)")
    trainers, streams = [], []
    with tempfile.TemporaryDirectory() as out:
        for name, changes in variants:
            cfg = TrainConfig(out_dir=Path(out) / name, train_images=args.train_images, train_ann=args.train_ann,
                              weights=weights, progress=False, tensorboard=False)
            trainer = Trainer(with_changes(base, changes), cfg, preset=args.preset)
            trainer.model.train()
            trainers.append(trainer)
            streams.append(trainer._batches())
        times: list[list[float]] = [[] for _ in variants]
        for step in range(args.warmup + args.steps):
            for i, (trainer, stream) in enumerate(zip(trainers, streams)):
                images, targets, _ = next(stream)  # the same batches in each stream: one seed, one data set
                start = time.perf_counter()
                trainer._step(images, targets)
                if step >= args.warmup:
                    times[i].append(time.perf_counter() - start)
    rows = []
    for (name, changes), t in zip(variants, times):
        rows.append({"variant": name, "changes": changes, "mean_s": statistics.mean(t),
                     "median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "steps": len(t)})
    print(f"{'variant':34s} {'mean s':>7s} {'median':>7s} {'min':>7s} {'max':>7s}  x preset")
    for row in rows:
        print(f"{row['variant']:34s} {row['mean_s']:7.3f} {row['median_s']:7.3f} {row['min_s']:7.3f} "
              f"{row['max_s']:7.3f}  {rows[0]['mean_s'] / row['mean_s']:.2f}")
    result = {"preset": args.preset, "weights": str(weights) if weights else None, "data": str(args.train_ann),
              "batch_size": TrainConfig.batch_size,
              "threads": args.threads, "warmup_steps": args.warmup, "rows": rows,
              "cpu": cpu_info(), "torch": torch.__version__, "commit": commit(),
              "command": "python bench/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

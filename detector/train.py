"""Train a preset on a COCO-format data set; with no data set given, on the built-in synthetic one.

    python -m detector.train                      # small_r18_fpn on data/synthetic (generated once)
    python -m detector.train --model maskrcnn_r50_fpn --weights W --train-images DIR --train-ann ANN.json \\
        [--val-images DIR --val-ann ANN.json] [--out runs/NAME] [--iters N | --epochs N] [--resume]
    python -m detector.train --model maskrcnn_r50_fpn --backbone-weights resnet50_imagenet ...   # from ImageNet
    torchrun --nproc_per_node 8 -m detector.train ...   # one process per GPU

Writes OUT/last.pth (the checkpoint --resume continues from), OUT/metrics.jsonl, OUT/model_final.safetensors
and, with a validation set, OUT/eval.json, each atomically. Exit status: 0 when done, 1 when the loss
diverges, 2 on bad input or a file that cannot be written (a full disk: OUT/last.pth keeps the last
checkpoint, for --resume), reported in one line as ``error: <file>: <problem>``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

# Only what parsing the arguments needs: --help and argument errors answer before torch is imported.
from detector.modeling.preset_names import DEFAULT_PRESET, PRESET_NAMES
from detector.training.schedules import SCHEDULES

if TYPE_CHECKING:
    from detector.training import TrainConfig

logger = logging.getLogger("detector.train")

# The synthetic data set's arguments: those of ``python -m detector.data.synthetic``'s defaults.
SYNTHETIC = {"train": 4000, "val": 50, "size": 256, "seed": 0}


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m detector.train", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(PRESET_NAMES), metavar="PRESET",
                   help="the preset to train (default: the one --weights names in its metadata, "
                   f"else {DEFAULT_PRESET})")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--weights", type=Path, metavar="FILE", help="start from these weights (fine-tuning); "
                       "a file written by detector.train brings its classes")
    start.add_argument("--backbone-weights", metavar="FILE|NAME",
                       help="start the trunk from an ImageNet classifier in torchvision's format (a file, or a "
                       "catalogue name such as resnet50_imagenet: `python -m detector.weights list`); "
                       "the FPN and heads start afresh")
    p.add_argument("--trainable-backbone-layers", type=int, choices=range(6), metavar="N",
                   help="trunk stages that train, 0..5 from the top (layer4 ... layer1, the stem); the others keep "
                   "their start values (default: the preset's; 3 for the R-CNN presets, as torchvision)")
    data = p.add_argument_group("data (default: the synthetic set, generated into --synthetic-dir)")
    data.add_argument("--train-images", type=Path, metavar="DIR")
    data.add_argument("--train-ann", type=Path, metavar="ANN.json")
    data.add_argument("--val-images", type=Path, metavar="DIR")
    data.add_argument("--val-ann", type=Path, metavar="ANN.json")
    data.add_argument("--synthetic-dir", type=Path, default=Path("data/synthetic"), metavar="DIR")
    data.add_argument("--min-sizes", type=_positive(int), nargs="+", metavar="PX",
                      help="shorter sides to draw from for each image (default: the preset's recipe, else its "
                      "min_size)")
    data.add_argument("--max-size", type=_positive(int), metavar="PX", help="default: the preset's max_size")
    data.add_argument("--workers", type=int, metavar="N", help="loader processes (default: 4 on CUDA, 0 on the CPU)")
    sched = p.add_argument_group("schedule")
    length = sched.add_mutually_exclusive_group()
    length.add_argument("--iters", type=_positive(int), metavar="N", help="default: the preset's recipe")
    length.add_argument("--epochs", type=_positive(int), metavar="N",
                        help="default, for a preset whose recipe gives no --iters: 12")
    sched.add_argument("--batch-size", type=_positive(int), default=2, help="images per process (default: 2)")
    sched.add_argument("--aspect-ratio-group-factor", type=int, default=0, metavar="K",
                       help="batch images of like aspect ratio: 0, by orientation (default); K > 0, in torchvision's "
                       "2K + 2 ratio groups (its COCO recipe: 3)")
    sched.add_argument("--lr", type=_positive(float),
                       help="default: the preset's recipe (RECIPES in detector/modeling/presets.py), "
                       "else 0.02 x total batch / 16")
    sched.add_argument("--momentum", type=float, default=0.9)
    sched.add_argument("--weight-decay", type=float, default=1e-4)
    sched.add_argument("--warmup-iters", type=int, metavar="N",
                       help="default: the preset's recipe, else min(1000, a tenth of the schedule)")
    sched.add_argument("--lr-schedule", choices=SCHEDULES,
                       help="step: x0.1 at 2/3 and 8/9 of the schedule (or at --lr-steps); cosine (default: step "
                       "with --lr-steps, else the preset's recipe, else step)")
    sched.add_argument("--lr-steps", type=_positive(int), nargs="+", metavar="EPOCH",
                       help="the step schedule's x0.1 decays at the end of these epochs (torchvision's --lr-steps)")
    sched.add_argument("--clip-grad-norm", type=float, metavar="NORM",
                       help="clip the gradients' norm to NORM; 0: no clipping (default: the preset's recipe)")
    sched.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    run = p.add_argument_group("run")
    run.add_argument("--out", type=Path, metavar="DIR", help="default: runs/PRESET")
    run.add_argument("--device", help="default: cuda when available, else cpu")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--resume", action="store_true", help="continue from OUT/last.pth")
    run.add_argument("--checkpoint-every", type=_positive(int), default=500, metavar="N")
    run.add_argument("--stop-at", type=_positive(int), metavar="ITER",
                     help="stop after this iteration with a checkpoint (for --resume to go on)")
    run.add_argument("--log-every", type=_positive(int), default=20, metavar="N")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for a, b in (("train_images", "train_ann"), ("val_images", "val_ann")):
        if (getattr(args, a) is None) != (getattr(args, b) is None):
            parser.error(f"--{a.replace('_', '-')} and --{b.replace('_', '-')} go together")
    if args.aspect_ratio_group_factor < 0:
        parser.error(f"--aspect-ratio-group-factor must be at least 0, got {args.aspect_ratio_group_factor}")
    if args.clip_grad_norm is not None and args.clip_grad_norm < 0:
        parser.error(f"--clip-grad-norm must be 0 (off) or more, got {args.clip_grad_norm}")
    if args.lr_steps is not None and args.lr_schedule not in (None, "step"):
        parser.error(f"--lr-steps are for --lr-schedule step, not {args.lr_schedule}")
    if args.lr_steps is not None and args.lr_steps != sorted(set(args.lr_steps)):
        parser.error(f"--lr-steps must rise, got {' '.join(map(str, args.lr_steps))}")
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    import torch

    from detector.training import train
    from detector.weights.model_metadata import model_config_for

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        args.model, model_cfg = model_config_for(args.model, args.weights)  # the file's classes, where it names them
        result = train(model_cfg, _config(args, rank), preset=args.model)
    except ValueError as e:
        print(f"error: {_message(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # the output folder, a full disk
        print(f"error: {_os_message(e)}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if rank == 0:
        print(f"iterations: {result.iterations}/{result.total_iters}")
        print(f"checkpoint: {result.checkpoint}")
        if result.final_weights is not None:
            print(f"weights: {result.final_weights}")
    return 0


def _message(error: Exception) -> str:
    """The error's own message; from a loader worker, the last line of the traceback text it carries."""
    text = str(error)
    if "Original Traceback" in text:
        text = [line for line in text.splitlines() if line.strip()][-1].removeprefix("ValueError: ")
    return text


def _os_message(error: OSError) -> str:
    """``<file>: <problem>``, and where a full disk stopped the run, what is left to resume from."""
    from detector.training.checkpoint import CHECKPOINT_NAME

    text = f"{error.filename}: {error.strerror or error}" if error.filename else str(error.strerror or error)
    if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) and error.filename:
        if (Path(error.filename).parent / CHECKPOINT_NAME).is_file():  # every file is written whole
            text += "; the last checkpoint is intact: free some space and run again with --resume"
        else:
            text += "; free some space and run again"
    return text


def _config(args: argparse.Namespace, rank: int) -> TrainConfig:
    from detector.training import TrainConfig

    train_images, train_ann, val_images, val_ann = args.train_images, args.train_ann, args.val_images, args.val_ann
    if train_ann is None:
        paths = _synthetic(args.synthetic_dir, rank)
        train_images, train_ann = paths.train_images, paths.train_annotations
        if val_ann is None:
            val_images, val_ann = paths.val_images, paths.val_annotations
    cuda = args.device.startswith("cuda")
    return TrainConfig(
        out_dir=args.out or Path("runs") / args.model,
        train_images=train_images, train_ann=train_ann, val_images=val_images, val_ann=val_ann,
        iters=args.iters, epochs=args.epochs, batch_size=args.batch_size,
        aspect_ratio_group_factor=args.aspect_ratio_group_factor, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, warmup_iters=args.warmup_iters, lr_schedule=args.lr_schedule,
        clip_grad_norm=args.clip_grad_norm, workers=(4 if cuda else 0) if args.workers is None else args.workers,
        device=args.device, seed=args.seed, resume=args.resume, checkpoint_every=args.checkpoint_every,
        amp=args.amp, min_sizes=tuple(args.min_sizes) if args.min_sizes else None, max_size=args.max_size,
        weights=args.weights, backbone_weights=args.backbone_weights,
        trainable_backbone_layers=args.trainable_backbone_layers,
        lr_steps=tuple(args.lr_steps) if args.lr_steps else None, log_every=args.log_every, stop_at=args.stop_at,
        progress=not args.no_progress,
    )


def _synthetic(root: Path, rank: int, timeout_s: float = 600.0):
    """The synthetic set: rank 0 generates it (or finds it), the other processes wait for its manifest."""
    from detector.data.synthetic import ensure_synthetic

    if rank != 0:
        deadline = time.monotonic() + timeout_s
        while not (root / "manifest.json").is_file() and time.monotonic() < deadline:
            time.sleep(1.0)
    return ensure_synthetic(root, **SYNTHETIC)


if __name__ == "__main__":
    sys.exit(main())

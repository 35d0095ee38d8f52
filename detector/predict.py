"""python -m detector.predict: images in, one JSON line per image out, for 1 or 10 million images.

    python -m detector.predict --model maskrcnn_r50_fpn --weights W.pth --out out.jsonl photos/ 'scans/**/*.png'
    python -m detector.predict --weights runs/NAME/model_final.safetensors --out out.json a.jpg b.png
    python -m detector.predict --file-list todo.txt --format coco --ann instances_val2017.json --out res.json
    torchrun --nproc_per_node 4 -m detector.predict --device cuda --out out.jsonl photos/
    python -m detector.predict merge --out out.jsonl      # merge the part files of a torchrun job

Inputs: files, folders (searched recursively for image files), glob patterns and --file-list files
(detector/prediction/inputs.py). A path that does not exist stops the command before the model loads.

Output: --out X.jsonl gets one line per image as it is done: {"file", "width", "height", "detections":
[{"bbox": [x1, y1, x2, y2], "score", "label", "category", "mask": {"size", "counts"}, "keypoints": [[x, y,
score], ...]}]} ("keypoints" only on detections of the model's keypoint classes, persons). --out X.json gets
a JSON list of those objects, written at the end. --format coco --ann ANN.json: COCO results with the
annotation file's image ids (by file name) and category ids, a file for detector.eval --results.

A file that cannot be read gets {"file", "error"} and the run goes on; the exit status is then 1 and
the last line says how many failed. --fail-fast stops at the first one (exit status 2).
Rerunning the same command resumes: images with a result are skipped, failed ones retried, a line torn by
a kill dropped and redone (detector/prediction/jsonl.py). Under torchrun each process predicts every
N-th image into X.rank{r}.jsonl and rank 0 merges them into --out (detector/prediction/shards.py).
Results of files that are not among the inputs (an earlier run into the same --out) stay in it, and
the run says so on stderr before it starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

# Only what parsing the arguments and expanding the inputs need: both answer before torch is imported.
from detector import memory
from detector.export.backends import BACKEND_HELP, BACKENDS, DEFAULT_BACKEND, backend_arguments_error
from detector.mask_formats import DEFAULT_MASK_FORMAT, MASK_FORMATS
from detector.modeling.preset_names import DEFAULT_PRESET, PRESET_NAMES
from detector.modeling.speeds import DEFAULT_SPEED, SPEED_HELP, SPEED_NAMES
from detector.prediction import shards
from detector.prediction.inputs import expand_inputs

FORMATS = ("detector", "coco")
# How long rank 0 waits for the slowest rank before it merges: longer than any rank's share of a job.
MERGE_WAIT = timedelta(days=7)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m detector.predict", description=__doc__.split("\n")[0],
                                epilog="python -m detector.predict merge --out OUT: merge a torchrun job's parts")
    p.add_argument("images", nargs="*", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--file-list", action="append", default=[], type=Path, metavar="LIST.txt",
                   help="a file of image paths, one per line (may be given more than once)")
    p.add_argument("--out", type=Path, required=True, help="X.jsonl (a line per image, as it goes) or X.json")
    p.add_argument("--format", default="detector", choices=FORMATS,
                   help="detector: predict's own schema; coco: COCO results of --ann's image and category ids")
    p.add_argument("--ann", type=Path, metavar="ANN.json", help="the COCO annotation file of --format coco")
    p.add_argument("--model", choices=sorted(PRESET_NAMES),
                   help=f"model preset (default: the one --weights names in its metadata, else {DEFAULT_PRESET})")
    p.add_argument("--weights", type=Path, metavar="FILE|NAME",
                   help="weights file, or a catalogue name (python -m detector.weights list; downloaded when absent); "
                        "default: the preset's built-in weights")
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS, help=BACKEND_HELP)
    p.add_argument("--onnx", type=Path, metavar="MODEL.onnx", help="the ONNX file of --backend onnxruntime")
    p.add_argument("--score-threshold", type=float, default=0.5, help="drop detections scoring below this")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--speed", default=DEFAULT_SPEED, choices=SPEED_NAMES, help=SPEED_HELP)
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass, of similar sizes")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding threads")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first file that cannot be read")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help=memory.FLAG_HELP)
    p.add_argument("--masks", default=DEFAULT_MASK_FORMAT, choices=MASK_FORMATS)
    args = p.parse_args(argv)
    if not args.images and not args.file_list:
        p.error("name images, folders or patterns, or give a --file-list")
    if not 0.0 <= args.score_threshold <= 1.0:
        p.error(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if error := backend_arguments_error(args.backend, args.onnx, args.model, args.weights):
        p.error(error)
    if args.batch_size < 1 or args.workers < 1:
        p.error(f"--batch-size and --workers must be at least 1, got {args.batch_size} and {args.workers}")
    if (args.format == "coco") != (args.ann is not None):
        p.error("--format coco needs --ann ANN.json, and --ann is only for --format coco")
    if args.format == "coco" and args.masks == "polygon":
        p.error("--format coco writes masks as RLE: --masks rle or none")
    try:
        shards.check_output(args.out)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        files = expand_inputs(args.images, args.file_list)  # every argument is checked before torch is imported
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from detector.distributed import finish, init_distributed

    info, device = init_distributed(args.device, backend="gloo")  # gloo: the ranks only wait for each other
    try:
        return _run(args, files, info, device)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        finish(info)


def load_predictor(args: argparse.Namespace, device):
    """The model that predicts: the one place that chooses how (PyTorch, or onnxruntime on an exported file)."""
    from detector.export.backends import load_predictor as load

    return load(args.backend, args.model, args.weights, str(device), speed=args.speed, onnx=args.onnx)


def _run(args: argparse.Namespace, files: list[Path], info, device) -> int:
    from detector.distributed import gather_to_all, shard
    from detector.prediction.coco import coco_entries
    from detector.prediction.jsonl import open_for_resume
    from detector.prediction.run import Summary, detector_entries, predict_files

    coco = _coco_annotations(args.ann, files) if args.format == "coco" else None
    done = shards.done_files(args.out)  # resuming drops failures and torn lines, never a result: the same after
    if info.is_main:
        _warn_of_other_files(args.out, done, files)
    record = shards.record_path(args.out, info.rank, info.world_size)
    writer, _ = open_for_resume(record)
    with writer:
        mine = shard(files, info)
        todo = [f for f in mine if str(f) not in done]
        summary = Summary()
        if todo:
            if args.keep_freed_memory:
                memory.keep_freed_memory_for(args.device)
            predictor = load_predictor(args, device)
            make_entry = (coco_entries(coco, args.ann, predictor.class_names, with_masks=args.masks != "none")
                          if coco is not None else detector_entries(predictor, args.masks))
            summary = predict_files(predictor, todo, writer, make_entry, score_threshold=args.score_threshold,
                                    batch_size=args.batch_size, workers=args.workers, fail_fast=args.fail_fast,
                                    progress=args.progress if info.is_main else False,
                                    desc=f"rank {info.rank}" if info.world_size > 1 else None)
        summary.skipped = len(mine) - len(todo)
    if info.world_size > 1:
        _wait_for_every_rank()
    summaries = gather_to_all(summary, info)
    merged = None
    if info.is_main and (record != args.out or shards.part_paths(args.out)):
        merged = shards.merge(args.out)
    failed = merged.failed if merged else sum(s.failed for s in summaries)
    if info.is_main:
        print(_summary_line(summaries, failed, args.out))
        if failed:  # a COCO results document has no place for them: they stay in the part files
            where = shards.part_pattern(args.out) if args.out.suffix == ".json" and args.format == "coco" else args.out
            print(f"error: {failed} of {len(files)} files failed: their \"error\" lines in {where} say why",
                  file=sys.stderr)
    return 1 if failed else 0


def _warn_of_other_files(out: Path, done: set[str], files: list[Path]) -> None:
    """Say so when ``out``'s records hold results (``done``) of files that are not among this run's inputs:
    a resumed run keeps every result, so an earlier run's images into the same --out stay beside this run's."""
    others = done - {str(f) for f in files}
    if others:
        where = ", ".join(str(p) for p in shards.records(out))
        print(f"warning: {where} already holds results of {len(others)} files that are not among these inputs "
              f"(an earlier run into --out {out}, e.g. {min(others)}); they stay in {out} beside this run's images: "
              f"give another --out, or delete {where} to start afresh", file=sys.stderr)


def merge_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m detector.predict merge",
                                description="merge the part files OUT-STEM.rank*.jsonl of a job into --out")
    p.add_argument("--out", type=Path, required=True, help="the --out of the job")
    args = p.parse_args(argv)
    try:
        shards.check_output(args.out)
        merged = shards.merge(args.out)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{merged.images} images, {merged.failed} failed -> {args.out}")
    return 1 if merged.failed else 0


def _coco_annotations(ann: Path, files: list[Path]) -> dict:
    """The annotation file of --format coco, once it is known to name every file (before the model loads)."""
    from detector.data.coco_file import load_coco_file
    from detector.prediction.coco import check_all_named, image_ids_by_name

    dataset = load_coco_file(ann).dataset
    check_all_named(files, image_ids_by_name(dataset["images"], ann), ann)
    return dataset


def _wait_for_every_rank() -> None:
    """Until every rank is done with its share (ranks of one job may end hours apart: no default timeout)."""
    import torch.distributed as dist

    dist.monitored_barrier(timeout=MERGE_WAIT, wait_all_ranks=True)


def _summary_line(summaries, failed: int, out: Path) -> str:
    total = lambda key: sum(getattr(s, key) for s in summaries)  # noqa: E731
    return (f"{total('images')} images predicted, {total('skipped')} done before, {failed} failed, "
            f"{total('detections')} detections -> {out}")


if __name__ == "__main__":
    sys.exit(main())

"""COCO evaluation from the command line: a model over a dataset's images, or an existing results file.

    python -m detector.eval --model PRESET [--weights FILE] --images DIR --ann ANN.json \\
        [--device cpu] [--batch-size 2] [--out results.json]
    python -m detector.eval --weights runs/NAME/model_final.safetensors --images DIR --ann ANN.json
        (a file written by detector.train or detector.weights convert names its model: no --model)
    python -m detector.eval --results RESULTS.json --ann ANN.json
    either with [--iou-types bbox segm keypoints] [--metrics-out metrics.json] [--plots DIR]

Prints pycocotools' 12 (bbox, segm) or 10 (keypoints) numbers and a per-category AP table for each
IoU type, the VOC07 11-point box AP, and the time spent predicting and scoring. Under ``torchrun``
each process predicts its share of the images and rank 0 scores them all.
Exit status: 0 when done, 2 on bad input, reported as ``error: <file>: <problem>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

from typing import TYPE_CHECKING

# Only what parsing the arguments needs (no torch): --help and argument errors answer at once; the rest
# is imported where it is used.
from detector import memory
from detector.evaluation.ground_truth import IOU_TYPES, check_iou_type_supported, load_ground_truth
from detector.export.backends import BACKEND_HELP, BACKENDS, DEFAULT_BACKEND, backend_arguments_error
from detector.modeling.speeds import DEFAULT_SPEED, SPEED_HELP, SPEED_NAMES

if TYPE_CHECKING:
    from detector.evaluation.coco_eval import CocoEvalResult
    from detector.distributed import DistInfo
    from detector.evaluation.voc import VocResult

logger = logging.getLogger("detector.eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detector.eval", description=__doc__.split("\n")[0])
    parser.add_argument("--model", metavar="PRESET",
                        help="run this preset over --images (default with --weights: the preset the file names)")
    parser.add_argument("--results", type=Path, metavar="RESULTS.json", help="score this COCO results file")
    parser.add_argument("--ann", type=Path, required=True, metavar="ANN.json", help="COCO annotation file")
    parser.add_argument("--weights", type=Path, metavar="FILE|NAME",
                        help="the model's weights: a file or a catalogue name (default: the preset's)")
    parser.add_argument("--images", type=Path, metavar="DIR", help="folder of the annotation file's images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--speed", default=DEFAULT_SPEED, choices=SPEED_NAMES, help=SPEED_HELP)
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS, help=BACKEND_HELP)
    parser.add_argument("--onnx", type=Path, metavar="MODEL.onnx", help="the ONNX file of --backend onnxruntime")
    parser.add_argument("--batch-size", type=int, default=2, help="images per forward pass (default: 2)")
    parser.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                        help=memory.FLAG_HELP)
    parser.add_argument("--iou-types", nargs="+", choices=IOU_TYPES,
                        help="default: every type that the model or the results file provides")
    parser.add_argument("--out", type=Path, metavar="RESULTS.json", help="write the COCO results here")
    parser.add_argument("--metrics-out", type=Path, metavar="METRICS.json", help="write the numbers here as JSON")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write precision/recall curves here as PNG")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    runs_model = bool(args.model or args.weights or args.onnx)
    if error := backend_arguments_error(args.backend, args.onnx, args.model, args.weights):
        parser.error(error)
    if args.results is not None and runs_model:
        parser.error("--results scores a results file: give it without --model, --weights and --onnx")
    if args.results is None and not runs_model:
        parser.error("one of --model, --weights (a file that names its model), --onnx or --results is required")
    if runs_model and args.images is None:
        parser.error(f"{'--model' if args.model else '--weights' if args.weights else '--onnx'} needs --images")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if runs_model and args.keep_freed_memory:
        memory.keep_freed_memory_for(args.device)
    from detector.distributed import finish, init_distributed

    # gloo: the results gathered are Python objects on the CPU. Under torchrun with --device cuda, each
    # process predicts on its own GPU, cuda:LOCAL_RANK.
    ctx, device = init_distributed(args.device, backend="gloo")
    args.device = str(device)
    try:
        return _run(args, ctx)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # writing --out, --metrics-out or --plots
        print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
    finally:
        finish(ctx)


def load_predictor(preset: str | None, weights: Path | None, device: str, speed: str = DEFAULT_SPEED,
                   backend: str = DEFAULT_BACKEND, onnx: Path | None = None):
    """The model's ``Predictor`` (``preset`` None: the one ``weights`` names), or with backend
    "onnxruntime" the ``OnnxPredictor`` of ``onnx``; imported here so that ``--results`` runs without
    the model code."""
    from detector.export.backends import load_predictor as load

    return load(backend, preset, weights, device, speed=speed, onnx=onnx)


def _run(args: argparse.Namespace, ctx: DistInfo) -> int:
    from detector.evaluation.coco_eval import evaluate_coco
    from detector.evaluation.coco_results import iou_types_in, load_results, write_results
    from detector.evaluation.report import metrics_dict
    from detector.evaluation.voc import voc_ap

    coco_gt = load_ground_truth(args.ann)
    if args.results is not None:
        results = load_results(args.results, coco_gt)
        iou_types = _choose_iou_types(args.iou_types, iou_types_in(results), str(args.results),
                                      allow_missing=not results)
        _check_annotations_support(coco_gt, iou_types, args.ann)
        inference_s = None
    else:
        results, iou_types, inference_s = _predict(args, coco_gt, ctx)
    if not ctx.is_main:
        return 0
    if args.out is not None:
        write_results(results, args.out)

    start = time.perf_counter()
    evaluations = [evaluate_coco(coco_gt, results, iou_type) for iou_type in iou_types]
    voc = voc_ap(coco_gt, results) if "bbox" in iou_types else None
    scoring_s = time.perf_counter() - start

    _print_report(evaluations, voc, inference_s, scoring_s)
    if args.metrics_out is not None:
        args.metrics_out.parent.mkdir(parents=True, exist_ok=True)
        metrics = metrics_dict(evaluations, voc, inference_s=inference_s, scoring_s=scoring_s)
        args.metrics_out.write_text(json.dumps(metrics, indent=2) + "\n")
    if args.plots is not None:
        from detector.evaluation.plots import plot_pr_curves

        for evaluation in evaluations:
            plot_pr_curves(evaluation, args.plots)
    return 0


def _print_report(evaluations: list[CocoEvalResult], voc: VocResult | None, inference_s: float | None,
                  scoring_s: float) -> None:
    from detector.evaluation.report import format_category_table, format_voc

    for evaluation in evaluations:
        print(f"== {evaluation.iou_type} ==")
        print(evaluation.summary, end="")
        print(format_category_table(evaluation.per_category_ap))
    if voc is not None:
        print(format_voc(voc))
    inference_text = "-" if inference_s is None else f"{inference_s:.2f}s"
    print(f"timing: inference {inference_text}, scoring {scoring_s:.2f}s")


def _predict(args: argparse.Namespace, coco_gt, ctx: DistInfo) -> tuple[list[dict], list[str], float]:
    """(every rank's results, the IoU types to score, the seconds spent predicting and gathering)."""
    from detector.evaluation.category_map import label_to_category_id
    from detector.distributed import gather, shard
    from detector.evaluation.inference import predict_coco_results

    source = f"model {args.model}" if args.model else f"model of {args.weights or args.onnx}"
    with _blame(source) if args.model else contextlib.nullcontext():  # else the errors name the file
        try:
            predictor = load_predictor(args.model, args.weights, args.device, args.speed, args.backend, args.onnx)
        except (OSError, KeyError) as e:
            raise ValueError(str(e)) from None
    provided = ["bbox"] + ["segm"] * bool(predictor.has_masks) + ["keypoints"] * bool(predictor.has_keypoints)
    if not args.iou_types and "keypoints" in provided and not _supports(coco_gt, "keypoints"):
        provided.remove("keypoints")  # default: what the model gives and the annotations can score
    iou_types = _choose_iou_types(args.iou_types, provided, source, allow_missing=False)
    _check_annotations_support(coco_gt, iou_types, args.ann)  # before the long part
    with _blame(args.ann):
        mapping = label_to_category_id(predictor.class_names, coco_gt.dataset["categories"])
        if not mapping:
            raise ValueError(f"no category is named as a class of {source} "
                             f"({', '.join(predictor.class_names[1:6])}, ...)")
    records = shard(coco_gt.loadImgs(sorted(coco_gt.getImgIds())), ctx)
    start = time.perf_counter()
    local = predict_coco_results(predictor, records, args.images, mapping, batch_size=args.batch_size,
                                 with_masks="segm" in iou_types, with_keypoints="keypoints" in iou_types)
    results = gather(local, ctx)
    return results, iou_types, time.perf_counter() - start


def _choose_iou_types(requested: list[str] | None, provided: list[str], source: str, *,
                      allow_missing: bool) -> list[str]:
    """The requested IoU types (default: those provided, else bbox); a ValueError for one not provided,
    unless ``allow_missing`` (empty results score 0 on anything)."""
    if not requested:
        return provided or ["bbox"]
    requested = list(dict.fromkeys(requested))
    missing = [t for t in requested if t not in provided]
    if missing and not allow_missing:
        from detector.evaluation.coco_results import RESULT_KEY

        needed = ", ".join(f"{t} needs {RESULT_KEY[t]!r}" for t in missing)
        raise ValueError(f"{source}: provides only {', '.join(provided) or 'nothing'} ({needed})")
    return requested


def _supports(coco_gt, iou_type: str) -> bool:
    try:
        check_iou_type_supported(coco_gt, iou_type)
    except ValueError:
        return False
    return True


def _check_annotations_support(coco_gt, iou_types: list[str], ann_path: Path) -> None:
    with _blame(ann_path):
        for iou_type in iou_types:
            check_iou_type_supported(coco_gt, iou_type)


@contextlib.contextmanager
def _blame(source: Path | str):
    """Prefix the message of a ValueError raised inside with the file it is about."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


if __name__ == "__main__":
    sys.exit(main())

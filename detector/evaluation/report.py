"""Text and JSON renderings of evaluation results, for the CLI's output and ``--metrics-out``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from detector.evaluation.coco_eval import CocoEvalResult
from detector.evaluation.voc import VocResult


def format_category_table(per_category_ap: Mapping[str, float], columns: int = 3) -> str:
    """Rows of (category, AP in %) pairs, ``columns`` pairs a row; "-" for a category without ground truth."""
    cells = [(name, "-" if math.isnan(ap) else f"{100 * ap:.1f}") for name, ap in per_category_ap.items()]
    if not cells:
        return "(no categories)"
    name_width = max(len("category"), *(len(name) for name, _ in cells))
    header = " | ".join(f"{'category':<{name_width}} {'AP':>5}" for _ in range(min(columns, len(cells))))
    lines = [header, "-" * len(header)]
    for start in range(0, len(cells), columns):
        lines.append(" | ".join(f"{name:<{name_width}} {ap:>5}" for name, ap in cells[start : start + columns]))
    return "\n".join(lines)


def format_voc(voc: VocResult) -> str:
    """One line: the mean and the per-class VOC07 11-point AP at IoU 0.5, in %."""
    per_class = ", ".join(f"{name} {100 * ap:.1f}" for name, ap in voc.per_class_ap.items())
    return f"VOC07 11-point AP@0.5 (boxes): mAP {100 * voc.mean_ap:.2f} [{per_class}]"


def metrics_dict(
    results: Sequence[CocoEvalResult],
    voc: VocResult | None,
    *,
    inference_s: float | None,
    scoring_s: float,
) -> dict:
    """{iou type: {stat name: value}, "per_category_ap": {iou type: {name: AP or None}},
    "voc": {"mAP", "per_class"} (with bbox), "timing": {"inference_s", "scoring_s"}}."""
    metrics: dict = {r.iou_type: dict(r.stats) for r in results}
    metrics["per_category_ap"] = {
        r.iou_type: {name: None if math.isnan(ap) else ap for name, ap in r.per_category_ap.items()} for r in results
    }
    if voc is not None:
        metrics["voc"] = {"mAP": voc.mean_ap, "per_class": dict(voc.per_class_ap)}
    metrics["timing"] = {"inference_s": inference_s, "scoring_s": scoring_s}
    return metrics

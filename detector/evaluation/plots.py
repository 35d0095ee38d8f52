"""Precision/recall curves of a COCO evaluation as PNG files (needs matplotlib)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from detector.evaluation.coco_eval import CocoEvalResult

logger = logging.getLogger(__name__)

PLOT_IOUS = (0.5, 0.75)


def mean_precision_curve(result: CocoEvalResult, iou: float) -> np.ndarray | None:
    """Precision at each recall threshold (R,), averaged over the categories with ground truth,
    at IoU ``iou``, area "all", most detections; None where no category has ground truth."""
    t = int(np.argmin(np.abs(result.iou_thrs - iou)))
    if not np.isclose(result.iou_thrs[t], iou):
        raise ValueError(f"IoU {iou} is not one of the evaluated thresholds {result.iou_thrs.tolist()}")
    p = result.precision[t, :, :, 0, -1]  # (T, R, K, A, M) -> (R, K)
    defined = (p > -1).all(axis=0)  # (K,): -1 marks a category without ground truth, for every recall
    if not defined.any():
        return None
    return p[:, defined].mean(axis=1)


def plot_pr_curves(result: CocoEvalResult, out_dir: str | Path) -> Path:
    """Write ``{iou_type}_pr.png`` in ``out_dir``: one curve per IoU of PLOT_IOUS; the file's path."""
    from matplotlib.figure import Figure  # imported here: only --plots needs matplotlib

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5, 4), dpi=100)
    ax = fig.add_subplot()
    for iou in PLOT_IOUS:
        curve = mean_precision_curve(result, iou)
        if curve is not None:
            ap = float(curve.mean())
            ax.plot(result.rec_thrs, curve, label=f"{_threshold_name(result.iou_type)}={iou:.2f} (AP {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01),
           title=f"{result.iou_type}: mean of categories, area all, maxDets {result.max_dets[-1]}")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(loc="lower left")
    path = out_dir / f"{result.iou_type}_pr.png"
    fig.savefig(path)
    logger.info("wrote %s", path)
    return path


def _threshold_name(iou_type: str) -> str:
    return "OKS" if iou_type == "keypoints" else "IoU"

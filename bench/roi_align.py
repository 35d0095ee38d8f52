"""RoIAlign forward + backward on the CPU, as training runs it: torchvision's kernel against
detector.modeling.sparse_roi_align (the pooler's training path), on the shapes of our presets' heads.

    python bench/roi_align.py --threads 2 --repeats 20 --json bench/results/roi_align_cpu.json

Each case pools random boxes of its head's sizes from one FPN level and sends a random gradient back;
the two take turns at every repeat, so that a shared machine's load falls on both alike. The largest
difference of the pooled features and of the features' gradient is printed beside the times. Prints a
table (median, min, max milliseconds) and writes JSON with the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.ops import roi_align as torchvision_roi_align

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import commit, cpu_info  # noqa: E402
from detector.modeling import sparse_roi_align  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    feature: tuple[int, int, int, int]  # (N, C, H, W) of the level pooled from
    stride: int
    rois: int  # over the whole batch
    output: int
    sampling_ratio: int
    aligned: bool
    box_sizes: tuple[float, float]  # side lengths drawn from, in image pixels


CASES = (
    # small_r18_fpn training on 288 x 384 images, 2 a step: the heads' RoIs from P2.
    Case("small_r18_fpn mask head", (2, 64, 72, 96), 4, 20, 28, 0, True, (16.0, 160.0)),
    Case("small_r18_fpn box head", (2, 64, 72, 96), 4, 128, 7, 2, True, (8.0, 112.0)),
    Case("small_r18_fpn keypoint head", (2, 64, 72, 96), 4, 16, 14, 0, True, (24.0, 160.0)),
    # An R50-FPN on COCO (800 x 1088, 2 images a step): box and mask heads' P2 share.
    Case("R50-FPN box head, COCO", (2, 256, 200, 272), 4, 512, 7, 2, False, (8.0, 112.0)),
    Case("R50-FPN mask head, COCO", (2, 256, 200, 272), 4, 64, 14, 2, False, (16.0, 112.0)),
)


def make_inputs(case: Case, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features requiring grad, rois (B, 5), gradient of the pooled features) of ``case``."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = case.feature
    image_h, image_w = h * case.stride, w * case.stride
    lo, hi = case.box_sizes
    size = lo + (hi - lo) * torch.rand(case.rois, 2, generator=g)
    xy = torch.rand(case.rois, 2, generator=g) * (torch.tensor([image_w, image_h]) - size)
    index = torch.randint(0, n, (case.rois, 1), generator=g).float()
    rois = torch.cat([index, xy, xy + size], 1)
    feature = torch.randn(case.feature, generator=g).requires_grad_()
    grad = torch.randn(case.rois, c, case.output, case.output, generator=g)
    return feature, rois, grad


def forward_backward(pool, case: Case, feature: torch.Tensor, rois: torch.Tensor, grad: torch.Tensor):
    """(pooled, feature gradient) by ``pool`` (roi_align's signature)."""
    feature.grad = None
    out = pool(feature, rois, (case.output, case.output), 1.0 / case.stride, case.sampling_ratio, case.aligned)
    out.backward(grad)
    return out.detach(), feature.grad


def run_case(case: Case, repeats: int) -> dict:
    feature, rois, grad = make_inputs(case)
    methods = {"torchvision": torchvision_roi_align, "sparse": sparse_roi_align.roi_align}
    results = {name: forward_backward(pool, case, feature, rois, grad) for name, pool in methods.items()}  # warm
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, pool in methods.items():
            start = time.perf_counter()
            forward_backward(pool, case, feature, rois, grad)
            times[name].append((time.perf_counter() - start) * 1000)
    (out_a, grad_a), (out_b, grad_b) = results["torchvision"], results["sparse"]
    row = {"case": case.name, "feature": list(case.feature), "rois": case.rois, "output": case.output,
           "sampling_ratio": case.sampling_ratio, "aligned": case.aligned,
           "max_abs_diff_pooled": (out_a - out_b).abs().max().item(),
           "max_abs_diff_grad": (grad_a - grad_b).abs().max().item()}
    for name, ms in times.items():
        row[name] = {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms)}
    row["speedup_median"] = row["torchvision"]["median_ms"] / row["sparse"]["median_ms"]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--cases", nargs="+", help="case names (default: all)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = [c for c in CASES if not args.cases or c.name in args.cases]
    if not cases:
        p.error(f"no such case; choose from: {', '.join(c.name for c in CASES)}")
    rows = [run_case(case, args.repeats) for case in cases]
    print(f"{'case':34s} {'torchvision ms':>22s} {'sparse ms':>22s} {'x':>5s} {'max |diff| out, grad':>22s}")
    for r in rows:
        tv, sp = r["torchvision"], r["sparse"]
        print(f"{r['case']:34s} {tv['median_ms']:8.1f} ({tv['min_ms']:5.1f}-{tv['max_ms']:5.1f}) "
              f"{sp['median_ms']:8.1f} ({sp['min_ms']:5.1f}-{sp['max_ms']:5.1f}) {r['speedup_median']:5.2f} "
              f"{r['max_abs_diff_pooled']:10.1e} {r['max_abs_diff_grad']:10.1e}")
    report = {"threads": args.threads, "repeats": args.repeats, "rows": rows, "cpu": cpu_info(),
              "torch": torch.__version__, "commit": commit(), "command": "python bench/roi_align.py " + " ".join(
                  argv if argv is not None else sys.argv[1:])}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({r["case"]: round(r["speedup_median"], 2) for r in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

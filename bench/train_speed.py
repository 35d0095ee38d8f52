"""Training speed, ours against torchvision's reference model: iterations/s on the same batches.

    python bench/train_speed.py --models maskrcnn_r50_fpn --size 320 416 --batch 2 --iters 5 --threads 2

Both models start from the same random weights (torchvision's COCO layout, FrozenBN, 3 trainable
stages; see bench/reference.py) and take SGD steps (lr 1e-3, momentum 0.9,
gradients clipped at norm 10: random weights start with large losses) on the
same synthetic batches: a few boxes per image with their masks and keypoints, images already at their
training size (torchvision's transform is set not to resize them). The two take turns at every step,
so that a shared machine's load falls on both alike. Proposal sampling is random in both, so their
losses are alike, not equal. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detector.modeling.presets import get_preset  # noqa: E402
from detector.modeling.rcnn import RCNN  # noqa: E402
from detector.modeling.transform import InputConfig  # noqa: E402
from detector.structures import Targets  # noqa: E402
from detector.weights.loading import load_state_dict_strict  # noqa: E402
from detector.weights.torchvision_keys import convert_torchvision_state_dict  # noqa: E402
from bench.reference import torchvision_reference  # noqa: E402

MODELS = ("fasterrcnn_r50_fpn", "maskrcnn_r50_fpn", "keypointrcnn_r50_fpn")
CLIP_GRAD_NORM = 10.0


def synthetic_batches(preset: str, count: int, batch: int, size: tuple[int, int], seed: int = 0) -> list[list[tuple]]:
    """``count`` batches of (image (3, H, W) in [0, 1], boxes (K, 4), labels (K,), masks (K, H, W) uint8,
    keypoints (K, 17, 3))."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    num_labels = 1 if preset == "keypointrcnn_r50_fpn" else 90
    batches = []
    for _ in range(count):
        items = []
        for _ in range(batch):
            k = 3
            xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
            wh = 16 + torch.rand(k, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35])
            boxes = torch.cat([xy, xy + wh], dim=1).round()  # (K, 4)
            boxes = torch.minimum(boxes, torch.tensor([w, h, w, h], dtype=boxes.dtype))
            masks = torch.zeros(k, h, w, dtype=torch.uint8)
            for m, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
                m[y1:y2, x1:x2] = 1
            box_wh = boxes[:, 2:] - boxes[:, :2]
            points = boxes[:, None, :2] + torch.rand(k, 17, 2, generator=g) * box_wh[:, None]  # (K, 17, 2)
            keypoints = torch.cat([points, torch.full((k, 17, 1), 2.0)], dim=2)
            labels = torch.randint(1, num_labels + 1, (k,), generator=g)
            items.append((torch.rand(3, h, w, generator=g), boxes, labels, masks, keypoints))
        batches.append(items)
    return batches


def build_pair(preset: str, size: tuple[int, int], device: torch.device):
    """torchvision's model and ours, in training mode, with the same weights."""
    tv = torchvision_reference(preset, min_size=min(size), max_size=max(max(size), 1333))
    ours = RCNN(replace(get_preset(preset), input=InputConfig(min_size=min(size), max_size=max(max(size), 1333))))
    load_state_dict_strict(ours, convert_torchvision_state_dict(tv.state_dict()))
    return tv.to(device).train(), ours.to(device).train()


def _sgd(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9, weight_decay=1e-4)


def _step(model, optimizer, loss_fn, device: torch.device) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    losses = loss_fn()
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # Random weights give large first losses: clipped, the steps stay finite (a NaN step is faster).
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], CLIP_GRAD_NORM)
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, loss.item()


def bench_model(preset: str, size: tuple[int, int], batch: int, iters: int, warmup: int, device: torch.device,
                lr: float = 1e-3) -> dict:
    tv, ours = build_pair(preset, size, device)
    tv_opt, our_opt = _sgd(tv, lr), _sgd(ours, lr)
    with_masks, with_keypoints = preset == "maskrcnn_r50_fpn", preset == "keypointrcnn_r50_fpn"
    times = {"torchvision": [], "ours": []}
    losses = {"torchvision": [], "ours": []}
    for step, items in enumerate(synthetic_batches(preset, warmup + iters, batch, size)):
        images = [i[0].to(device) for i in items]
        tv_targets, our_targets = [], []
        for _, boxes, labels, masks, keypoints in items:
            t = {"boxes": boxes.to(device), "labels": labels.to(device)}
            if with_masks:
                t["masks"] = masks.to(device)
            if with_keypoints:
                t["keypoints"] = keypoints.to(device)
            tv_targets.append(t)
            our_targets.append(Targets(boxes=t["boxes"], labels=t["labels"], masks=t.get("masks"), keypoints=t.get("keypoints")))
        for name, model, opt, fn in (
            ("torchvision", tv, tv_opt, lambda: tv(images, tv_targets)),
            ("ours", ours, our_opt, lambda: ours(images, our_targets)),
        ):
            seconds, loss = _step(model, opt, fn, device)
            if step >= warmup:
                times[name].append(seconds)
                losses[name].append(loss)
    row = {"model": preset, "batch": batch, "size": list(size), "device": str(device), "threads": torch.get_num_threads(),
           "iters": iters}
    for name in times:
        median = statistics.median(times[name])
        row[f"{name}_it_per_s"] = round(1 / median, 3)
        row[f"{name}_step_s"] = [round(t, 4) for t in times[name]]
        row[f"{name}_loss"] = [round(v, 4) for v in losses[name]]
    row["speedup"] = round(row["ours_it_per_s"] / row["torchvision_it_per_s"], 2)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["maskrcnn_r50_fpn"], choices=MODELS)
    p.add_argument("--size", nargs=2, type=int, default=[320, 416], metavar=("H", "W"), help="training image size")
    p.add_argument("--batch", type=int, default=2, help="images per step")
    p.add_argument("--iters", type=int, default=5, help="timed steps after the warm-up; the median is reported")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (gradients clipped at norm 10)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=Path("bench/train.json"))
    args = p.parse_args(argv)
    if args.iters < 1 or args.batch < 1 or args.warmup < 0:
        p.error("--iters and --batch must be positive, --warmup not negative")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    rows = [bench_model(m, tuple(args.size), args.batch, args.iters, args.warmup, device, args.lr) for m in args.models]
    print(f"{'model':22} {'batch':>5} {'size':>10} {'torchvision it/s':>17} {'ours it/s':>10} {'speedup':>8} "
          f"{'tv loss':>8} {'our loss':>8}")
    for r in rows:
        print(f"{r['model']:22} {r['batch']:>5} {'x'.join(map(str, r['size'])):>10} {r['torchvision_it_per_s']:>17.3f} "
              f"{r['ours_it_per_s']:>10.3f} {r['speedup']:>8.2f} {statistics.mean(r['torchvision_loss']):>8.3f} "
              f"{statistics.mean(r['ours_loss']):>8.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"device": str(device), "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ours against torchvision's reference on identical weights and inputs.

    python bench/engine.py --models maskrcnn_r50_fpn --size 800 1216 --threads 2 --repeat 3 --json bench/engine.json

Both models get the same random weights (torchvision's COCO layout, FrozenBN; see
tests/detector/modeling/parity_utils.py) and the same image; their score distributions are set so that
each image gives the full 100 detections, as a busy COCO image does. "end to end" includes what a
service needs: masks as COCO RLE (torchvision: paste 100 full-image masks, then encode; ours: encode
from the boxes). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_util

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detector.modeling.presets import get_preset  # noqa: E402
from detector.modeling.rcnn import RCNN  # noqa: E402
from detector.modeling.transform import InputConfig  # noqa: E402
from detector.weights.loading import TORCHVISION_FROZEN_BN_EPS, load_state_dict_strict  # noqa: E402
from detector.modeling.backbone import set_frozen_bn_eps  # noqa: E402
from detector.weights.torchvision_keys import convert_torchvision_state_dict  # noqa: E402
from tests.detector.modeling.parity_utils import torchvision_reference  # noqa: E402


def _time(fn, repeat: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _torchvision_rle(outputs: list[dict]) -> list[list[dict]]:
    rles = []
    for o in outputs:
        if "masks" not in o:
            rles.append([])
            continue
        masks = (o["masks"][:, 0] > 0.5).numpy().astype(np.uint8)
        rles.append(mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0))))
    return rles


def bench_model(preset: str, size: tuple[int, int], batch: int, repeat: int) -> dict:
    min_size, max_size = min(size), max(max(size), 1333)
    tv = torchvision_reference(preset, min_size=min_size, max_size=max_size, eps=TORCHVISION_FROZEN_BN_EPS)
    ours = RCNN(replace(get_preset(preset), input=InputConfig(min_size=min_size, max_size=max_size))).eval()
    load_state_dict_strict(ours, convert_torchvision_state_dict(tv.state_dict()))
    set_frozen_bn_eps(ours, TORCHVISION_FROZEN_BN_EPS)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, *size, generator=g) for _ in range(batch)]

    def run_tv():
        with torch.inference_mode():
            out = tv(images)
        return out, _torchvision_rle(out)

    def run_ours():
        dets = ours.predict(images)
        return dets, [d.rle_masks() if d.mask_probs is not None else [] for d in dets]

    t_tv, (tv_out, _) = _time(run_tv, repeat)
    t_ours, (our_out, _) = _time(run_ours, repeat)
    return {
        "model": preset,
        "batch": batch,
        "size": list(size),
        "threads": torch.get_num_threads(),
        "detections": [len(d) for d in our_out],
        "torchvision_s": round(t_tv, 3),
        "ours_s": round(t_ours, 3),
        "speedup": round(t_tv / t_ours, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["maskrcnn_r50_fpn"])
    p.add_argument("--batches", nargs="+", type=int, default=[1])
    p.add_argument("--size", nargs=2, type=int, default=[800, 1216], metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path, default=Path("bench/engine.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [bench_model(m, tuple(args.size), b, args.repeat) for m in args.models for b in args.batches]
    print(f"{'model':24} {'batch':>5} {'dets':>10} {'torchvision s':>14} {'ours s':>8} {'speedup':>8}")
    for r in rows:
        print(f"{r['model']:24} {r['batch']:>5} {str(r['detections']):>10} {r['torchvision_s']:>14} {r['ours_s']:>8} {r['speedup']:>8}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"device": "cpu", "rows": rows}, indent=1))
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

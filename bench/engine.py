"""Ours against torchvision's reference on identical weights, inputs and thresholds, end to end and, for
ours, stage by stage, in each of our speed modes (``detector.modeling.speeds.SPEEDS``).

    python bench/engine.py --models maskrcnn_r50_fpn --size 800 1216 --threads 2
    python bench/engine.py --models fasterrcnn_r50_fpn maskrcnn_r50_fpn keypointrcnn_r50_fpn --batches 1 2 4
    python bench/engine.py --device cuda --modes exact fast bf16 --batches 1 4
    python bench/engine.py --models small_r18_fpn --size 480 640 --modes exact fast
    python bench/engine.py --models fasterrcnn_r50_fpn_v2 maskrcnn_r50_fpn_v2 --modes exact fast

small_r18_fpn, the built-in model, has no torchvision twin: it runs alone, with its built-in weights,
and the fast modes are compared with the exact one ("vs ex" in the table: how many times faster).

Both models get the same random weights (torchvision's COCO layout: v1, FrozenBN with eps = 0, as for its
checkpoints; v2, BatchNorm2d, as its ``*_resnet50_fpn_v2`` builders; trained-looking BN statistics; see
bench/reference.py) and the same images; their score
distributions are such that each image gives the full 100 detections, as a busy COCO image does.
"end to end" includes what a service needs: masks as COCO RLE (torchvision: paste 100 full-image
masks, then encode; ours: encode from the boxes). Stages are timed with forward hooks on our modules:
pre (resize, normalise, pad; to channels-last), backbone, FPN, RPN (head and proposals), box / mask /
keypoint head (RoIAlign and the head's layers), post (decoding, NMS, mask probabilities, keypoint
decoding, back to image pixels, and the RLE). Each of our modes is compared with torchvision's output
(JSON "vs_torchvision"; exact: bit-identical, all differences 0) and each fast mode with our exact one
(table and JSON "vs_exact"): the fraction of detections matched (same label, IoU > 0.9; or within 1
px) and the largest score and box differences.

Each implementation runs in a process of its own, as it would in production, and the processes take
turns: ours keeps freed memory for the next pass (``detector.memory``, as predict, eval and the service
do on the CPU), torchvision's model runs under the default malloc. ``--torchvision-kept-memory`` adds a row for
torchvision's model under our setting, to show what the setting alone is worth; ``--no-kept-memory``
runs ours without it.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_util
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from detector.memory import keep_freed_memory  # noqa: E402
from detector.modeling.poolers import RoIAlignThreads  # noqa: E402
from detector.modeling.backbone import set_frozen_bn_eps  # noqa: E402
from detector.modeling.kernels import bf16_is_fast  # noqa: E402
from detector.modeling.speeds import SPEEDS  # noqa: E402
from detector.modeling.preset_names import DEFAULT_PRESET  # noqa: E402
from detector.modeling.presets import get_preset  # noqa: E402
from detector.modeling.rcnn import RCNN  # noqa: E402
from detector.modeling.transform import InputConfig  # noqa: E402
from detector.predictor import Predictor, inference_options  # noqa: E402
from detector.weights.loading import TORCHVISION_FROZEN_BN_EPS, load_state_dict_strict  # noqa: E402
from detector.weights.torchvision_keys import convert_torchvision_state_dict  # noqa: E402
from bench.machine import commit, cpu_info  # noqa: E402
from bench.reference import PRESETS as TORCHVISION_MODELS  # noqa: E402  (v1 and v2)
from bench.reference import torchvision_reference  # noqa: E402

log = logging.getLogger("bench.engine")
MODELS = (*TORCHVISION_MODELS, DEFAULT_PRESET)  # the built-in model has no torchvision twin: ours only
STAGES = ("pre", "backbone", "fpn", "rpn", "box", "mask", "keypoint", "post")
# Hooked modules, by stage: a stage's time is the sum of its modules' forward calls.
_STAGE_MODULES = {
    "backbone": ("backbone",),
    "fpn": ("fpn",),
    "rpn": ("rpn",),
    "box": ("roi_heads.box_pooler", "roi_heads.box_head"),
    "mask": ("roi_heads.mask_pooler", "roi_heads.mask_head"),
    "keypoint": ("roi_heads.keypoint_pooler", "roi_heads.keypoint_head"),
}


class StageTimer:
    """Forward hooks on our model's stages. ``run(fn)`` -> (seconds per stage, result of fn).

    Synchronised as torchvision's model is timed (``_timed``): once before the pass and once after. The hooks
    only take marks: the clock on the CPU, CUDA events on a GPU (recorded on the stream, read after the
    pass), so that ours does not pay a host-device sync at every stage that torchvision's does not."""

    def __init__(self, model: RCNN, device: torch.device) -> None:
        self.device = device
        self.first_start = None
        self.spans: list[tuple[str, object, object]] = []  # (stage, start mark, end mark)
        for stage, names in _STAGE_MODULES.items():
            for name in names:
                module = _get(model, name)
                if module is not None:
                    module.register_forward_pre_hook(self._pre_hook())
                    module.register_forward_hook(self._post_hook(stage))

    def _mark(self):
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @staticmethod
    def _seconds(start, end) -> float:
        return start.elapsed_time(end) / 1000 if isinstance(start, torch.cuda.Event) else end - start

    def _pre_hook(self):
        def hook(module, args):
            module._bench_start = self._mark()
            if self.first_start is None:
                self.first_start = module._bench_start

        return hook

    def _post_hook(self, stage: str):
        def hook(module, args, output):
            self.spans.append((stage, module._bench_start, self._mark()))

        return hook

    def run(self, fn) -> tuple[dict[str, float], object]:
        self.first_start, self.spans = None, []
        _sync(self.device)
        wall = time.perf_counter()
        start = self._mark()
        out = fn()
        _sync(self.device)
        total = time.perf_counter() - wall
        stages = {s: 0.0 for s in STAGES}
        for stage, begin, end in self.spans:
            stages[stage] += self._seconds(begin, end)
        stages["pre"] = self._seconds(start, self.first_start) if self.first_start is not None else 0.0
        stages["post"] = total - sum(v for k, v in stages.items() if k != "post")
        stages["total"] = total
        return stages, out


def _timed(fn, device: torch.device) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _get(model: torch.nn.Module, name: str):
    for part in name.split("."):
        model = getattr(model, part, None)
    return model


def _torchvision_rle(outputs: list[dict]) -> list[list[dict]]:
    """What a service does with torchvision's output: threshold the pasted masks and encode them."""
    rles = []
    for o in outputs:
        if "masks" not in o:
            rles.append([])
            continue
        masks = (o["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
        rles.append(mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0))))
    return rles


class _Boxes:
    """torchvision's output dict as ``compare`` reads detections."""

    def __init__(self, out: dict) -> None:
        self.boxes, self.scores, self.labels = out["boxes"].cpu(), out["scores"].cpu(), out["labels"].cpu()

    def __len__(self) -> int:
        return len(self.boxes)


def compare(ref, dets) -> dict:
    """How far ``dets`` are from ``ref`` (lists of Detections): the fraction of ``ref``'s detections with a
    detection of the same label at IoU > 0.9 ("matched"; over those pairs the largest |score| and
    |coordinate| differences), and within 1 px in every coordinate ("matched_1px": random weights give
    boxes under 1 px tall, whose IoU a rounding-level shift ruins)."""
    matched = matched_1px = total = 0
    score_diff = box_diff = 0.0
    for r, d in zip(ref, dets):
        total += len(r)
        if len(r) == 0 or len(d) == 0:
            continue
        same = r.labels[:, None] == d.labels[None, :]  # (K_ref, K)
        iou = box_iou(r.boxes.float(), d.boxes.float()) * same
        dist = (r.boxes[:, None] - d.boxes[None]).abs().amax(dim=2).masked_fill(~same, float("inf"))
        matched_1px += int((dist.min(dim=1).values <= 1.0).sum())
        best, idx = iou.max(dim=1)
        ok = best > 0.9
        matched += int(ok.sum())
        if ok.any():
            score_diff = max(score_diff, (r.scores[ok] - d.scores[idx[ok]]).abs().max().item())
            box_diff = max(box_diff, (r.boxes[ok] - d.boxes[idx[ok]]).abs().max().item())
    n = max(total, 1)
    return {"matched": round(matched / n, 4), "matched_1px": round(matched_1px / n, 4), "max_score_diff": score_diff,
            "max_box_diff_px": box_diff}


def _median_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}


def build_pair(preset: str, size: tuple[int, int], device: torch.device):
    """torchvision's model and ours, on ``device``, with the same weights."""
    min_size, max_size = min(size), max(max(size), 1333)
    tv = torchvision_reference(preset, min_size=min_size, max_size=max_size, eps=TORCHVISION_FROZEN_BN_EPS)
    ours = RCNN(replace(get_preset(preset), input=InputConfig(min_size=min_size, max_size=max_size))).eval()
    load_state_dict_strict(ours, convert_torchvision_state_dict(tv.state_dict()))
    set_frozen_bn_eps(ours, TORCHVISION_FROZEN_BN_EPS)
    return tv.to(device), ours.to(device)


IMPL_TORCHVISION, IMPL_TORCHVISION_KEPT = "torchvision", "torchvision+kept-memory"


def bench_model(preset: str, size: tuple[int, int], batch: int, repeat: int, modes: list[str],
                device: torch.device, torchvision: bool = True, torchvision_kept: bool = False,
                keep_memory: bool = True) -> list[dict]:
    """One row per implementation: torchvision's (unless ``torchvision`` is False; with ``torchvision_kept``
    also torchvision's under our malloc setting), then ours per mode. Each implementation runs in its
    own process, as each would in production: ours keeps freed memory (``detector.memory``, as
    the CLIs and the service do, unless ``keep_memory`` is False), torchvision's model runs under the default
    malloc. The processes take turns within each repetition, so that a shared machine's load falls on
    all of them alike; the first repetition is a warm-up (unless ``repeat`` is 0)."""
    if preset not in TORCHVISION_MODELS:  # the built-in model has no torchvision twin
        torchvision = torchvision_kept = False
    slow = {m for m in modes if m == "bf16" and not bf16_is_fast(device)}
    if slow:
        log.warning("bf16 is emulated on this %s (no native bf16): timed once, without a warm-up", device)
    impls = [IMPL_TORCHVISION] * torchvision + [IMPL_TORCHVISION_KEPT] * torchvision_kept + list(modes)
    workers = {impl: _Worker(impl, preset, size, batch, device, keep_memory) for impl in impls}
    try:
        runs, last = {impl: [] for impl in impls}, {}
        for rep in range(repeat + 1):
            for impl, worker in workers.items():
                if impl in slow and rep != repeat:
                    continue
                runs[impl].append(worker.run())
        last = {impl: worker.outputs() for impl, worker in workers.items()}
    finally:
        for worker in workers.values():
            worker.close()
    base = {"model": preset, "batch": batch, "size": list(size), "device": str(device), "threads": torch.get_num_threads()}
    rows = []
    for impl in impls:
        timed = runs[impl] if impl in slow else runs[impl][1:] or runs[impl]
        stages = _median_stages(timed)
        counts = {"page_faults": int(stages.pop("page_faults")), "kernel_s": stages.pop("kernel_s")}
        ours = impl in modes
        row = {**base, "impl": f"ours-{impl}" if ours else impl, "detections": [len(d) for d in last[impl]],
               "total_s": stages.pop("total"), "runs_s": [round(r["total"], 4) for r in timed],
               "kept_memory": _keeps_memory(impl, keep_memory, device), **counts}
        if ours:
            row["stages_s"] = stages
        if impl == "bf16":
            row["bf16_native"] = bf16_is_fast(device)
        if ours and impl != "exact" and "exact" in last:
            row["vs_exact"] = compare(last["exact"], last[impl])
        if ours and torchvision:
            row["vs_torchvision"] = compare(last[IMPL_TORCHVISION], last[impl])
        rows.append(row)
    exact_row = next((r for r in rows if r["impl"] == "ours-exact"), None)
    for row in rows:
        if torchvision and row is not rows[0]:
            row["speedup"], row["speedup_range"] = _speedup(rows[0], row)
        if exact_row is not None and row["impl"].startswith("ours-") and row is not exact_row:
            row["speedup_vs_exact"] = _speedup(exact_row, row)[0]
    return rows


class _Worker:
    """One implementation in its own process (``_serve``): ``run()`` times one pass, ``outputs()`` gives
    the last pass's detections (boxes, scores, labels on the CPU; plain tensors across the pipe)."""

    def __init__(self, impl: str, preset: str, size: tuple[int, int], batch: int, device: torch.device,
                 keep_memory: bool) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, impl, preset, size, batch, str(device),
                                                        torch.get_num_threads(), keep_memory), daemon=True)
        self.process.start()
        child.close()
        self._call("ready")

    def _call(self, what: str):
        self.conn.send(what)
        try:
            status, value = self.conn.recv()
        except (EOFError, ConnectionError):
            self.process.join(5)
            raise RuntimeError(f"benchmark worker died (exit code {self.process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"benchmark worker failed:\n{value}")
        return value

    def run(self) -> dict[str, float]:
        return self._call("run")

    def outputs(self) -> list[_Boxes]:
        return [_Boxes(o) for o in self._call("outputs")]

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send("stop")
            except OSError:
                pass
            self.process.join(30)
            if self.process.is_alive():
                self.process.kill()


def _serve(conn, impl: str, preset: str, size: tuple[int, int], batch: int, device: str, threads: int,
           keep_memory: bool) -> None:
    """A worker process's loop: build ``impl``'s model, then answer "run" / "outputs" until "stop"."""
    import traceback

    try:
        torch.set_num_threads(threads)
        device = torch.device(device)
        run, last = _build(impl, preset, size, batch, device, keep_memory), None
        while (what := conn.recv()) != "stop":
            if what == "run":
                stages, last = run()
                conn.send(("ok", stages))
            elif what == "outputs":
                conn.send(("ok", last))
            else:
                conn.send(("ok", None))
    except Exception:  # noqa: BLE001 -- the parent reports it
        conn.send(("error", traceback.format_exc()))


def _build(impl: str, preset: str, size: tuple[int, int], batch: int, device: torch.device, keep_memory: bool):
    """A function that runs ``impl`` once on the benchmark's images -> (seconds by stage, detections)."""
    if _keeps_memory(impl, keep_memory, device):
        keep_freed_memory()
    if preset in TORCHVISION_MODELS:
        tv, ours = build_pair(preset, size, device)
    else:  # at its own input size, with its built-in weights where present
        tv, ours = None, Predictor.from_preset(preset, device=device, speed="exact").model
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, *size, generator=g).to(device) for _ in range(batch)]
    if impl in (IMPL_TORCHVISION, IMPL_TORCHVISION_KEPT):
        def run_tv():
            with torch.inference_mode():
                out = tv(images)
            _torchvision_rle(out)
            return [{k: o[k].cpu() for k in ("boxes", "scores", "labels")} for o in out]

        def timed_tv():
            seconds, out = _timed(run_tv, device)
            return {"total": seconds}, out

        return _with_kernel_counts(timed_tv)
    model = ours if impl == "exact" else ours.optimize_for_inference(**vars(inference_options(impl, device)))
    timer = StageTimer(model, device)
    roi_threads = RoIAlignThreads()  # as the Predictor lends its model; ends with this process

    def run_ours():
        with roi_threads.active():
            dets = model.predict(images)
        for d in dets:
            if d.mask_probs is not None:
                d.rle_masks()
        return [{"boxes": d.boxes.cpu(), "scores": d.scores.cpu(), "labels": d.labels.cpu()} for d in dets]

    return _with_kernel_counts(lambda: timer.run(run_ours))


def _keeps_memory(impl: str, keep_memory: bool, device: torch.device) -> bool:
    """Whether ``impl``'s process keeps freed memory: ours unless told not to, as ``Predictor`` does (on
    the CPU only), torchvision's model only in its "+kept-memory" row."""
    return device.type == "cpu" and (impl == IMPL_TORCHVISION_KEPT or (impl in SPEEDS and keep_memory))


def _with_kernel_counts(run):
    """``run`` -> (timings with "page_faults" and "kernel_s", this process's minor page faults and
    system CPU seconds during the pass, output)."""
    def counted():
        before = resource.getrusage(resource.RUSAGE_SELF)
        timings, out = run()
        after = resource.getrusage(resource.RUSAGE_SELF)
        return {**timings, "page_faults": after.ru_minflt - before.ru_minflt,
                "kernel_s": after.ru_stime - before.ru_stime}, out

    return counted


def _speedup(base: dict, row: dict) -> tuple[float, list[float] | None]:
    """How many times faster ``row`` ran than ``base``: the median of the repetitions' ratios (a load
    that comes and goes hits both of a pair) and their range; the ratio of the totals where the two were
    not timed alike (emulated bf16: once)."""
    if len(row["runs_s"]) != len(base["runs_s"]):
        return round(base["total_s"] / row["total_s"], 2), None
    ratios = [b / r for b, r in zip(base["runs_s"], row["runs_s"])]
    return round(statistics.median(ratios), 2), [round(min(ratios), 2), round(max(ratios), 2)]


def format_table(rows: list[dict]) -> str:
    head = f"{'model':22} {'batch':>5} {'impl':23} {'total s':>8} {'vs tv':>6} {'vs ex':>6} {'faults':>8} {'kernel s':>8} " + " ".join(f"{s:>8}" for s in STAGES)
    head += f" {'matched':>7} {'<=1px':>6} {'max dscore':>10} {'max dbox px':>11}"
    lines = [head]
    for r in rows:
        stages = r.get("stages_s", {})
        cells = " ".join(f"{stages[s]:>8.3f}" if s in stages else f"{'':>8}" for s in STAGES)
        vs = r.get("vs_exact")
        tail = (f" {vs['matched']:>7.3f} {vs['matched_1px']:>6.3f} {vs['max_score_diff']:>10.2e} "
                f"{vs['max_box_diff_px']:>11.2e}" if vs else "")
        speedup = " ".join(f"{r[k]:>6.2f}" if k in r else f"{'':>6}" for k in ("speedup", "speedup_vs_exact"))
        kernel = f"{r['page_faults']:>8} {r['kernel_s']:>8.3f}"
        lines.append(f"{r['model']:22} {r['batch']:>5} {r['impl']:23} {r['total_s']:>8.3f} {speedup} {kernel} {cells}{tail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["maskrcnn_r50_fpn"], choices=MODELS)
    p.add_argument("--batches", nargs="+", type=int, default=[1])
    p.add_argument("--size", nargs=2, type=int, default=[800, 1216], metavar=("H", "W"))
    p.add_argument("--modes", nargs="+", default=list(SPEEDS), choices=list(SPEEDS), help="our speed modes")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--repeat", type=int, default=3, help="timed runs after one warm-up (0: one run, no warm-up); "
                   "the median is reported")
    p.add_argument("--no-torchvision", action="store_true", help="time ours only")
    p.add_argument("--torchvision-kept-memory", action="store_true",
                   help="also time torchvision's model under our malloc setting (detector.memory), to show "
                   "what that setting alone does for it")
    p.add_argument("--no-kept-memory", action="store_true",
                   help="run ours under the default malloc too (no detector.memory.keep_freed_memory())")
    p.add_argument("--json", type=Path, default=Path("bench/engine.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for model in args.models:
        for batch in args.batches:
            rows += bench_model(model, tuple(args.size), batch, args.repeat, args.modes, device,
                                torchvision=not args.no_torchvision, torchvision_kept=args.torchvision_kept_memory,
                                keep_memory=not args.no_kept_memory)
    print(format_table(rows))
    env = {"device": str(device), "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "threads": args.threads, "bf16_native": bf16_is_fast(device), "command": " ".join(sys.argv),
           "commit": commit(), "cpu": cpu_info()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**env, "rows": rows}, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

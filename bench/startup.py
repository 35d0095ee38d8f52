"""How long the command lines take to start: to answer ``--help``, to refuse a bad argument, and to reach
the first forward pass of ``python -m detector.predict``, next to what ``import torch, torchvision``
alone costs (the floor that every run that predicts pays).

    python bench/startup.py                   # small_r18_fpn and maskrcnn_r50_fpn, fast and exact, 5 runs
    python bench/startup.py --presets small_r18_fpn --speeds exact --runs 2 --json /tmp/startup.json

Every figure is a fresh process, timed by this one from just before it starts: ``--runs`` of each, taken
in turns (one of each, then again), all kept in the JSON with their median and range; beside the wall
time, the CPU time the process used (user + system), which a busy machine inflates far less. "first
forward" is ``python -m detector.predict`` as a user runs it, up to the moment its first
``Predictor.predict`` begins (the process then exits: the forward pass itself is bench/engine.py's);
the floor, ``import torch, torchvision``, is timed the same way, to the end of the import. The R50 preset reads random weights from a local safetensors file,
made once into ``--work-dir``; small_r18_fpn reads its built-in weights. Phases within that process
(imports done, model built and loaded) come from import hooks that add no import of their own.
Prints a table and writes JSON (default: bench/results/startup.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import commit, cpu_info  # noqa: E402
from detector.modeling.speeds import SPEED_NAMES  # noqa: E402
CLIS = ("detector.predict", "detector.eval", "detector.train", "detector.weights", "api")
R50_PRESET = "maskrcnn_r50_fpn"

# Runs ``python -m detector.predict`` in this process; prints "PHASE name seconds-since-the-epoch" at the
# end of the Predictor's import, when from_preset returns and when the first predict begins, then exits.
_PROBE = r"""
import importlib.abc, importlib.machinery, os, runpy, sys, time

def phase(name):
    print(f"PHASE {name} {time.time():.6f}", flush=True)

def patch(module):
    cls = module.Predictor
    from_preset, predict = cls.from_preset.__func__, cls.predict
    def timed_from_preset(c, *args, **kwargs):
        out = from_preset(c, *args, **kwargs)
        phase("loaded")
        return out
    def first_predict(self, images):
        phase("first_forward")
        os._exit(0)
    cls.from_preset, cls.predict = classmethod(timed_from_preset), first_predict
    phase("imported")

class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "detector.predictor":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            patch(module)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Hook())
runpy.run_module("detector.predict", run_name="__main__", alter_sys=True)
"""


# The floor: timed to the end of the import, then os._exit, as the first-forward runs are (no teardown).
_FLOOR = "import os, time, torch, torchvision; print(f'PHASE imported {time.time():.6f}', flush=True); os._exit(0)"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _timed(command: list[str], expect: int) -> tuple[float, float, str]:
    """(wall seconds from just before the process starts to its exit, its CPU seconds, its stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != expect:
        raise RuntimeError(f"{' '.join(command[:4])} ...: exit {done.returncode}, expected {expect}\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, done.stdout


def _first_forward(preset: str, speed: str, weights: Path | None, image: Path, out: Path) -> dict[str, float]:
    """Wall seconds from just before ``python -m detector.predict`` starts to each phase of it, and the CPU
    seconds it used up to its first forward pass ("cpu")."""
    args = ["--model", preset, "--speed", speed, "--out", str(out), str(image)]
    args += ["--weights", str(weights)] if weights else []
    phases = _phases([sys.executable, "-c", _PROBE, *args])
    if "first_forward" not in phases:
        raise RuntimeError(f"{preset}: the first forward pass was never reached")
    return phases


def _phases(command: list[str]) -> dict[str, float]:
    """Wall seconds from just before ``command`` starts to each "PHASE name time" line it prints, and its
    CPU seconds ("cpu")."""
    start_wall = time.time()
    _, cpu, stdout = _timed(command, expect=0)
    phases = {"cpu": cpu}
    for line in stdout.splitlines():
        if line.startswith("PHASE "):
            _, name, at = line.split()
            phases[name] = float(at) - start_wall
    return phases


def _summary(runs: list[float]) -> dict:
    return {"median_s": round(statistics.median(runs), 4), "min_s": round(min(runs), 4),
            "max_s": round(max(runs), 4), "runs_s": [round(r, 4) for r in runs]}


def _prepare(work: Path, presets: list[str]) -> tuple[Path, dict[str, Path | None]]:
    """A 480x640 test image, and each preset's weights file (None: its built-in weights)."""
    import numpy as np
    from PIL import Image

    work.mkdir(parents=True, exist_ok=True)
    image = work / "image.png"
    if not image.is_file():
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(image)
    weights: dict[str, Path | None] = {}
    for preset in presets:
        if preset == "small_r18_fpn":
            weights[preset] = None
            continue
        path = work / f"random_{preset}.safetensors"  # not a catalogue name: nothing is hashed on load
        if not path.is_file():
            code = ("import sys, torch\nfrom detector.modeling.presets import get_preset\n"
                    "from detector.modeling.rcnn import build_model\nfrom detector.weights import save_weights\n"
                    "torch.manual_seed(0)\nsave_weights(build_model(get_preset(sys.argv[1])), sys.argv[2])\n")
            _timed([sys.executable, "-c", code, preset, str(path)], expect=0)
        weights[preset] = path
    return image, weights


def measure(presets: list[str], speeds: list[str], runs: int, work: Path) -> dict:
    image, weights = _prepare(work, presets)
    python = [sys.executable]
    commands = {f"help {cli}": (python + ["-m", cli, "--help"], 0) for cli in CLIS}
    commands["argument error detector.predict"] = (
        python + ["-m", "detector.predict", "--model", "no_such_preset", "--out", "o.json", "a.png"], 2)
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    floor: list[dict[str, float]] = []
    phases: dict[tuple[str, str], list[dict[str, float]]] = {(p, s): [] for p in presets for s in speeds}
    for _ in range(runs):  # in turns, so that a change in the machine's load falls on every figure alike
        for name, (command, expect) in commands.items():
            seconds, cpu_s, _ = _timed(command, expect)
            wall[name].append(seconds)
            cpu[name].append(cpu_s)
        floor.append(_phases(python + ["-c", _FLOOR]))  # to the end of the import, as the runs below
        for preset, speed in phases:
            phases[preset, speed].append(_first_forward(preset, speed, weights[preset], image, work / "out.json"))
    results = {name: {**_summary(wall[name]), "cpu": _summary(cpu[name])} for name in commands}
    results["import torch, torchvision"] = {**_summary([f["imported"] for f in floor]),
                                            "cpu": _summary([f["cpu"] for f in floor])}
    beyond = {}
    for (preset, speed), runs_of in phases.items():
        run = f"{preset} {speed}"
        for name in ("imported", "loaded"):
            results[f"{name} {run}"] = _summary([p[name] for p in runs_of])
        results[f"first forward {run}"] = {**_summary([p["first_forward"] for p in runs_of]),
                                           "cpu": _summary([p["cpu"] for p in runs_of])}
        # Each run less the floor's run of the same turn; the median of those differences.
        beyond[run] = {
            "wall_s": round(statistics.median(p["first_forward"] - f["imported"] for p, f in zip(runs_of, floor)), 4),
            "cpu_s": round(statistics.median(p["cpu"] - f["cpu"] for p, f in zip(runs_of, floor)), 4),
        }
    return {"results": results, "first_forward_beyond_import_torch": beyond}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/startup.py", description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["small_r18_fpn", R50_PRESET])
    p.add_argument("--speeds", nargs="+", default=["fast", "exact"], choices=SPEED_NAMES,
                   help="predict's --speed: the fast ones build their copy of the model before the first pass")
    p.add_argument("--runs", type=int, default=5, help="fresh processes per figure (default: 5)")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "detector-startup",
                   help="where the test image and the random R50 weights are made (once)")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "startup.json")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs must be at least 1, got {args.runs}")
    import torch
    import torchvision

    report = {"bench": "startup", "commit": commit(), "cpu": cpu_info(), "python": platform.python_version(), "torch": torch.__version__,
              "torchvision": torchvision.__version__, "runs": args.runs, "presets": args.presets,
              "speeds": args.speeds, **measure(args.presets, args.speeds, args.runs, args.work_dir)}
    print(f"{'':44} {'median':>8} {'min':>8} {'max':>8} {'cpu':>8}  (seconds; {args.runs} runs; {report['cpu']['model']})")
    for name, r in report["results"].items():
        cpu_text = f"{r['cpu']['median_s']:8.3f}" if "cpu" in r else f"{'':8}"
        print(f"{name:44} {r['median_s']:8.3f} {r['min_s']:8.3f} {r['max_s']:8.3f} {cpu_text}")
    for run, r in report["first_forward_beyond_import_torch"].items():
        print(f"first forward of {run}: {r['wall_s']:.3f} s beyond import torch, torchvision ({r['cpu_s']:.3f} s CPU)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every command line answers ``--help`` and argument errors before it imports torch (or the service's
web stack): checked on what the process imported, not on the clock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.process_state import ROOT

CLIS = ["detector.predict", "detector.eval", "detector.train", "detector.weights", "detector.export", "api"]
# An argument error of each: (module, arguments) -> exit status 2 and a usage line (a missing file: its name).
ARGUMENT_ERRORS = [
    ("detector.predict", ["--model", "no_such_preset", "--out", "o.json", "a.jpg"]),
    ("detector.predict", ["--speed", "warp", "--out", "o.json", "a.jpg"]),
    ("detector.predict", ["--score-threshold", "2", "--out", "o.json", "a.jpg"]),
    ("detector.eval", ["--model", "small_r18_fpn", "--ann", "a.json"]),  # --model needs --images
    ("detector.eval", ["--results", "r.json", "--ann", "a.json", "--iou-types", "boxes"]),
    ("detector.eval", ["--ann", "a.json"]),  # neither --model, --weights nor --results
    ("detector.eval", ["--results", "r.json", "--weights", "w.safetensors", "--ann", "a.json"]),
    ("detector.train", ["--lr-schedule", "linear"]),
    ("detector.train", ["--model", "no_such_preset"]),
    ("detector.predict", ["--out", "o.json", "no_such_image.jpg"]),  # checked before the model is loaded
    ("detector.weights", ["fetch"]),
    ("detector.export", ["--out", "m.onnx", "--opset", "12"]),
    ("detector.eval", ["--backend", "onnxruntime", "--images", "d", "--ann", "a.json"]),  # without --onnx
    ("api", ["--max-batch-size", "0"]),
]
HEAVY = ("torch", "torchvision", "uvicorn", "fastapi", "matplotlib", "cv2")

# Run the module as ``python -m`` does, then name the heavy modules it imported.
_RUN = """
import runpy, sys
sys.argv = [sys.argv[0], *sys.argv[1:]]
try:
    runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
else:
    code = 0
print("IMPORTED", *[m for m in {heavy!r} if m in sys.modules], file=sys.stderr)
sys.exit(code)
"""


def _run(module: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", _RUN.format(module=module, heavy=HEAVY), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def _imported(out: subprocess.CompletedProcess) -> list[str]:
    line = next(line for line in out.stderr.splitlines() if line.startswith("IMPORTED"))
    return line.split()[1:]


@pytest.mark.parametrize("module", CLIS)
def test_help_answers_without_torch(module):
    out = _run(module, ["--help"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m ")
    assert _imported(out) == []


@pytest.mark.parametrize("module, args", ARGUMENT_ERRORS)
def test_argument_errors_answer_without_torch(module, args):
    out = _run(module, args)
    assert out.returncode == 2, out.stderr
    assert "usage: python -m " in out.stderr or "no_such_image.jpg" in out.stderr
    assert "error:" in out.stderr
    assert _imported(out) == []


def test_the_probe_sees_torch():
    """The observation above can fail: a run that goes past parsing imports torch."""
    out = _run("detector.weights", ["convert", "missing.pth", "out.safetensors", "--preset", "small_r18_fpn"])
    assert "torch" in _imported(out)

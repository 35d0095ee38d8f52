"""Issue #21, end to end, as a user runs it: fine-tune a torchvision-format checkpoint on a COCO-format set
of new classes with ``python -m detector.train``, then ``detector.predict``, ``POST /detect`` on a
``python -m api`` started with only ``DETECTOR_WEIGHTS``, and ``detector.eval``, none told the preset:
each answers with the new class names. The torchvision file, which names no model, still loads with its
preset; a preset that disagrees with the trained file is named beside the file's.

Small on purpose (tiny images, 2 iterations), since R50 on a CPU is slow; the first test is marked slow
(``make test-slow``); the second goes the same way on the small preset, in the default run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from detector.data.synthetic import ensure_synthetic
from detector.modeling.presets import COCO_CLASSES
from detector.predictor import Predictor
from tests.api.process import running

ROOT = Path(__file__).resolve().parents[1]
# The synthetic set's classes, renamed: none is a class of the presets, so training makes new class layers.
NEW_NAMES = {"circle": "ring", "square": "tile", "triangle": "wedge", "person": "walker"}
NEW_CLASSES = ["__background__", *NEW_NAMES.values()]
SIZES = ["--min-sizes", "128", "--max-size", "192"]


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> tuple[Path, Path]:
    """(images folder, annotation file): 3 synthetic 128-px images whose categories are renamed."""
    paths = ensure_synthetic(tmp_path_factory.mktemp("own_data"), train=3, val=1, size=128, seed=0)
    ann = json.loads(paths.train_annotations.read_text())
    for category in ann["categories"]:
        category["name"] = NEW_NAMES[category["name"]]
    own = paths.root / "own.json"
    own.write_text(json.dumps(ann))
    return paths.train_images, own


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _fine_tune(preset: str, weights: Path, own_data: tuple[Path, Path], out: Path) -> tuple[Path, str]:
    """(the trained file, what training logged)."""
    images, ann = own_data
    done = _run("detector.train", "--model", preset, "--weights", str(weights), "--train-images", str(images),
                "--train-ann", str(ann), "--iters", "2", "--batch-size", "1", "--workers", "0", "--device", "cpu",
                "--no-progress", "--out", str(out), *SIZES)
    assert done.returncode == 0, done.stderr
    return out / "model_final.safetensors", done.stderr


def _predict_serve_eval(final: Path, own_data: tuple[Path, Path], tmp_path: Path) -> None:
    """predict, the service and eval, given only the trained file: each answers with NEW_CLASSES."""
    images, ann = own_data
    first = sorted(images.iterdir())[0]
    done = _run("detector.predict", "--weights", str(final), "--score-threshold", "0", "--out",
                str(tmp_path / "pred.json"), str(first))
    assert done.returncode == 0, done.stderr
    categories = {d["category"] for d in json.loads((tmp_path / "pred.json").read_text())[0]["detections"]}
    assert categories and categories <= set(NEW_CLASSES[1:]), categories

    with running(tmp_path, preset=None, env={"DETECTOR_WEIGHTS": str(final)}) as server:
        server.wait_ready()
        info = server.get("/v1/model").json()
        assert info["classes"] == NEW_CLASSES and info["weights"] == final.name
        answer = httpx.post(f"{server.base}/detect", params={"score_threshold": 0}, timeout=60,
                            files={"image": ("a.png", first.read_bytes(), "image/png")})
        assert answer.status_code == 200, answer.text
        served = {d["category"] for d in answer.json()["detections"]}
        assert served and served <= set(NEW_CLASSES[1:]), served
        assert server.terminate() == 0

    done = _run("detector.eval", "--weights", str(final), "--images", str(images), "--ann", str(ann),
                "--iou-types", "bbox", "--out", str(tmp_path / "results.json"))
    assert done.returncode == 0, done.stderr
    ids = {c["id"]: c["name"] for c in json.loads(ann.read_text())["categories"]}
    scored = {ids[r["category_id"]] for r in json.loads((tmp_path / "results.json").read_text())}
    assert scored and scored <= set(NEW_CLASSES[1:]), scored
    for name in NEW_CLASSES[1:]:  # the per-category table
        assert name in done.stdout, done.stdout


@pytest.mark.slow  # R50 built, trained, loaded four times: a few minutes on a loaded 2-core machine
def test_fine_tune_a_torchvision_checkpoint_then_predict_serve_and_eval(own_data, tmp_path):
    from bench.reference import torchvision_reference

    preset = "maskrcnn_r50_fpn"
    checkpoint = tmp_path / "maskrcnn_torchvision.pth"
    torch.save(torchvision_reference(preset, min_size=128, max_size=192).state_dict(), checkpoint)  # as torchvision's
    assert Predictor.from_preset(preset, checkpoint).class_names == list(COCO_CLASSES)  # names no model: the preset's

    final, log = _fine_tune(preset, checkpoint, own_data, tmp_path / "run")
    assert "cls_score.weight" in log and "left initialised afresh" in log  # the class layers start afresh
    _predict_serve_eval(final, own_data, tmp_path)
    done = _run("detector.predict", "--model", "fasterrcnn_r50_fpn", "--weights", str(final), "--out",
                str(tmp_path / "no.json"), str(sorted(own_data[0].iterdir())[0]))
    assert done.returncode == 2 and "maskrcnn_r50_fpn" in done.stderr and "fasterrcnn_r50_fpn" in done.stderr


def test_the_trained_files_classes_go_through_predict_the_service_and_eval(own_data, tmp_path):
    """The same path on the small preset, from its built-in weights (or random ones)."""
    from detector.modeling.presets import get_preset
    from detector.modeling.rcnn import build_model
    from detector.weights import save_weights
    from detector.weights.builtin import builtin_weights

    start = builtin_weights("small_r18_fpn")
    if start is None:
        start = tmp_path / "random.safetensors"
        save_weights(build_model(get_preset("small_r18_fpn")), start)
    final, _ = _fine_tune("small_r18_fpn", start, own_data, tmp_path / "run")
    _predict_serve_eval(final, own_data, tmp_path)

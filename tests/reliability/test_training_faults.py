"""Training under faults: kill -9 while checkpoints are written and mid-run, a data set full of
edge cases and errors, a loss or gradients turning NaN.

What the training code documents (detector/train.py, detector/training, detector/data/coco.py):
checkpoints are written atomically (the old file or the new one, never half); a resumed run repeats
the uninterrupted one exactly on the CPU; crowd regions, boxes empty once clipped to the image and
images without objects are left out and counted; a missing or unreadable file, or a bad annotation,
stops the run with exit 2 and ``error: <file or annotation>: <problem>``; a non-finite loss stops it
with exit 1 and ``error: the loss is nan at iteration N``.

A finite loss with NaN gradients stops the run too, before the step (the checkpoint stays whole).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detector import train as train_cli
from detector.data.coco import CocoDataset
from detector.data.synthetic import ensure_synthetic
from detector.modeling.rcnn import RCNN
from detector.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tests.reliability import tally
from tests.api.process import ROOT

SEED = int(os.environ.get("RELIABILITY_SEED", "0"))  # the random kill points; any seed must pass
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ensure_synthetic(tmp_path_factory.mktemp("synthetic"), train=6, val=2, size=64, seed=0)


def _args(tiny, out: Path, *more: str, images: Path | None = None, ann: Path | None = None) -> list[str]:
    return ["--train-images", str(images or tiny.train_images), "--train-ann", str(ann or tiny.train_annotations),
            "--min-sizes", "64", "--max-size", "96", "--batch-size", "2", "--workers", "0", "--log-every", "1",
            "--no-progress", "--out", str(out), *more]  # fmt: skip


def _losses(out: Path) -> list[dict]:
    """metrics.jsonl without the timings, which differ from run to run."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "time"} for line in lines]


# ---- kill -9 while a checkpoint is being written


def test_kill_9_while_writing_checkpoints_always_leaves_a_whole_one(tmp_path):
    rounds, rng = 15, random.Random(SEED)
    writer = subprocess.Popen([sys.executable, "-m", "tests.reliability.checkpoint_writer", str(tmp_path)], cwd=ROOT,
                              env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    path, last, interrupted = tmp_path / CHECKPOINT_NAME, 0, 0
    try:
        assert writer.stdout.readline().strip() == "ready"
        for round_ in range(rounds):
            writer.stdin.write("go\n")
            writer.stdin.flush()
            pid = int(writer.stdout.readline())
            temporaries = set(tmp_path.glob(".*.tmp"))
            # Let it finish a first write or two, then kill it somewhere in the next ones.
            deadline = time.monotonic() + 120
            while not path.is_file() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.5))
            os.kill(pid, signal.SIGKILL)
            assert writer.stdout.readline().strip() == "reaped"
            interrupted += len(set(tmp_path.glob(".*.tmp")) - temporaries)  # killed between mkstemp and rename
            state = load_checkpoint(path)  # whole: torch.load reads it, it has every part
            iteration = state["iteration"]
            assert iteration >= last, f"round {round_}: went back from {last} to {iteration}"
            for name, tensor in state["model"].items():  # no tensor from another write
                assert bool((tensor == iteration).all()), f"round {round_}: {name} is not all {iteration}"
            last = iteration
    finally:
        writer.kill()
        writer.wait()
        for stale in tmp_path.glob(".*.tmp"):  # a checkpoint's size each: not worth keeping
            stale.unlink()
    assert interrupted >= rounds // 4, f"only {interrupted} of {rounds} kills landed mid-write: not a real test"
    tally.FAULTS.append(f"kill -9 during checkpoint writes x{rounds} ({interrupted} mid-write): last.pth whole "
                        f"each time, at iteration {last}; {interrupted} stale .tmp files left behind")  # fmt: skip


# ---- kill -9 mid-run, then --resume


def _start(tiny, out: Path, *more: str) -> subprocess.Popen:
    """``python -m detector.train``, 10 iterations checkpointed every 3; its output in a log beside ``out``."""
    more = ("--iters", "10", "--checkpoint-every", "3", "--seed", "1", *more)
    command = [sys.executable, "-m", "detector.train", *_args(tiny, out, *more)]
    with (out.parent / f"{out.name}-{time.monotonic_ns()}.log").open("w") as log:
        return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)


def _kill_after(proc: subprocess.Popen, out: Path, iteration: int) -> None:
    """SIGKILL once metrics.jsonl has reached ``iteration``."""
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= iteration:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.02)
    raise AssertionError(f"iteration {iteration} never came")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # its own bounds: four training runs of up to 600 s or 300 s each
def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_losses_exactly(tiny, tmp_path):
    rng = random.Random(SEED)
    whole = _start(tiny, tmp_path / "whole")
    assert whole.wait(600) == 0
    first, second = rng.randint(2, 5), rng.randint(7, 9)  # checkpoints at 3, 6, 9
    out = tmp_path / "killed"
    _kill_after(_start(tiny, out), out, first)
    _kill_after(_start(tiny, out, "--resume"), out, second)
    assert _start(tiny, out, "--resume").wait(600) == 0
    assert _losses(out) == _losses(tmp_path / "whole")
    assert load_checkpoint(out / CHECKPOINT_NAME)["iteration"] == 10
    tally.FAULTS.append(f"kill -9 of python -m detector.train after iterations {first} and {second}, --resume "
                        f"twice: metrics.jsonl equals the uninterrupted run's (10 iterations)")  # fmt: skip


# ---- a data set of edge cases


def _write_set(tiny, tmp_path: Path, edit) -> tuple[Path, Path]:
    """A copy of the tiny set's images and annotations, changed by ``edit(data, images_dir)``."""
    images = tmp_path / "images"
    images.mkdir()
    for path in tiny.train_images.iterdir():
        (images / path.name).write_bytes(path.read_bytes())
    data = json.loads(tiny.train_annotations.read_text())
    edit(data, images)
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps(data))
    return images, ann


def _new_annotation(data: dict, **fields) -> dict:
    image = data["images"][0]
    base = {"id": max(a["id"] for a in data["annotations"]) + 1, "image_id": image["id"], "category_id": 1,
            "bbox": [4.0, 4.0, 10.0, 10.0], "area": 100.0, "iscrowd": 0,
            "segmentation": [[4.0, 4.0, 14.0, 4.0, 14.0, 14.0, 4.0, 14.0]]}  # fmt: skip
    annotation = {**base, **fields}
    data["annotations"].append(annotation)
    return annotation


def _edge_cases(data: dict, images: Path) -> None:
    """Everything the loader documents as handled: crowd, zero-area and outside boxes, an image without
    objects, a polygon smaller than a pixel, keypoints all v=0."""
    _new_annotation(data, iscrowd=1, segmentation={"size": [64, 64], "counts": "0" * 10})
    _new_annotation(data, bbox=[10.0, 10.0, 0.0, 5.0])  # zero width
    _new_annotation(data, bbox=[100.0, 100.0, 20.0, 20.0])  # wholly outside the 64 x 64 image
    _new_annotation(data, bbox=[-5.0, 50.0, 20.0, 30.0])  # partly outside: clipped
    _new_annotation(data, bbox=[20.0, 20.0, 0.3, 0.3], segmentation=[[20.0, 20.0, 20.3, 20.0, 20.1, 20.3]])
    person = next(c["id"] for c in data["categories"] if c.get("keypoints"))
    _new_annotation(data, category_id=person, keypoints=[0] * 51, num_keypoints=0)
    empty = {**data["images"][1], "id": 999, "file_name": "empty.png"}
    (images / "empty.png").write_bytes((images / data["images"][1]["file_name"]).read_bytes())
    data["images"].append(empty)


def test_documented_edge_cases_are_left_out_counted_and_the_run_trains(tiny, tmp_path):
    images, ann = _write_set(tiny, tmp_path, _edge_cases)
    stats = CocoDataset(images, ann, with_masks=True).stats
    assert (stats.crowd_skipped, stats.degenerate_dropped, stats.images_without_annotations) == (1, 2, 1)
    out = tmp_path / "run"
    assert train_cli.main(_args(tiny, out, "--iters", "3", images=images, ann=ann)) == 0
    losses = _losses(out)
    assert [line["iter"] for line in losses] == [1, 2, 3] and all(v == v for line in losses for v in line.values())
    tally.FAULTS.append("data set with crowd, zero-area, outside, tiny-polygon, v=0 keypoint annotations and an "
                        "empty image: left out and counted as documented; 3 iterations trained")  # fmt: skip


def _corrupt_image(data, images):
    (images / data["images"][0]["file_name"]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return data["images"][0]["file_name"]


def _truncated_image(data, images):
    path = images / data["images"][0]["file_name"]
    path.write_bytes(path.read_bytes()[:200])
    return data["images"][0]["file_name"]


def _missing_image(data, images):
    (images / data["images"][0]["file_name"]).unlink()
    return data["images"][0]["file_name"]


def _wrong_size(data, images):
    data["images"][0]["width"] = 65
    return data["images"][0]["file_name"]


def _unknown_category(data, images):
    return f"annotation {_new_annotation(data, category_id=77)['id']}"


def _keypoint_count(data, images):
    person = next(c["id"] for c in data["categories"] if c.get("keypoints"))
    return f"annotation {_new_annotation(data, category_id=person, keypoints=[1, 1, 2] * 5)['id']}"


def _short_bbox(data, images):
    return f"annotation {_new_annotation(data, bbox=[1.0, 2.0, 3.0])['id']}"


def _no_bbox(data, images):
    annotation = _new_annotation(data)
    del annotation["bbox"]
    return f"annotation {annotation['id']}"


def _two_point_polygon(data, images):
    return f"annotation {_new_annotation(data, segmentation=[[4.0, 4.0, 14.0, 14.0]])['id']}"


def _one_point_polygon(data, images):
    return f"annotation {_new_annotation(data, segmentation=[[4.0, 4.0]])['id']}"


def _empty_segmentation(data, images):
    return f"annotation {_new_annotation(data, segmentation=[])['id']}"


BAD_DATA = [
    pytest.param(_corrupt_image, id="corrupt-image"),
    pytest.param(_truncated_image, id="truncated-image"),
    pytest.param(_missing_image, id="missing-image"),
    pytest.param(_wrong_size, id="size-not-the-annotations"),
    pytest.param(_unknown_category, id="unknown-category"),
    pytest.param(_keypoint_count, id="wrong-keypoint-count"),
    pytest.param(_short_bbox, id="bbox-of-3-numbers"),
    pytest.param(_no_bbox, id="no-bbox"),
    pytest.param(_two_point_polygon, id="polygon-of-2-points"),
    pytest.param(_one_point_polygon, id="polygon-of-1-point"),
    pytest.param(_empty_segmentation, id="empty-segmentation"),
]  # fmt: skip


def _bad_set(tiny, tmp_path: Path, edit) -> tuple[Path, Path, str]:
    named = []
    images, ann = _write_set(tiny, tmp_path, lambda data, images: named.append(edit(data, images)))
    return images, ann, named[0]


@pytest.mark.parametrize("edit", BAD_DATA)
def test_a_bad_file_or_annotation_is_a_value_error_naming_it(tiny, tmp_path, edit):
    """What the run reads, read here directly (the loader's ValueError is the run's exit 2, below)."""
    images, ann, named = _bad_set(tiny, tmp_path, edit)
    with pytest.raises(ValueError) as error:
        dataset = CocoDataset(images, ann, with_masks=True)
        for i in range(len(dataset)):
            dataset[i]
    assert named in str(error.value) and (named.endswith(".png") or str(ann) in str(error.value)), error.value
    tally.FAULTS.append(f"data set with {edit.__name__[1:].replace('_', ' ')}: ValueError naming {named}")


@pytest.mark.parametrize("edit", [_corrupt_image, _unknown_category], ids=["when-read", "when-indexed"])
def test_a_bad_file_or_annotation_stops_the_run_with_exit_2_naming_it(tiny, tmp_path, capsys, edit):
    images, ann, named = _bad_set(tiny, tmp_path, edit)
    # 3 iterations: every image of the set (6, in batches of 2) is read
    code = train_cli.main(_args(tiny, tmp_path / "run", "--iters", "3", images=images, ann=ann))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and named in err and "Traceback" not in err, err


# ---- NaN


def nan_at(n: int, *, grad: bool = False):
    """RCNN.forward whose loss turns NaN from call ``n`` on: through the loss itself, or (``grad``)
    only through its gradients, the loss staying finite."""
    forward, calls = RCNN.forward, []

    def nan_forward(model, images, targets):
        losses = forward(model, images, targets)
        calls.append(1)
        if len(calls) >= n:
            key = next(iter(losses))
            if grad:  # 0 * sqrt(0) is 0; its gradient, 0 * inf, is NaN
                zero = sum(p.sum() for p in model.parameters()) * 0
                losses[key] = losses[key] + zero * torch.sqrt(zero)
            else:
                losses[key] = losses[key] * float("nan")
        return losses

    return nan_forward


def _check_intact(out: Path, iteration: int) -> None:
    state = load_checkpoint(out / CHECKPOINT_NAME)
    for name, tensor in state["model"].items():
        assert torch.isfinite(tensor).all(), f"{name} in the checkpoint of iteration {state['iteration']} is not finite"
    assert state["iteration"] == iteration
    assert [line["iter"] for line in _losses(out)] == list(range(1, iteration + 1)), "lines past the checkpoint"


def test_a_nan_loss_stops_the_run_and_the_last_checkpoint_is_intact(tiny, tmp_path, monkeypatch, capsys):
    forward = RCNN.forward
    monkeypatch.setattr(RCNN, "forward", nan_at(3))
    out = tmp_path / "run"
    assert train_cli.main(_args(tiny, out, "--iters", "4", "--checkpoint-every", "2")) == 1
    assert "error: the loss is nan at iteration 3" in capsys.readouterr().err
    _check_intact(out, 2)
    losses = _losses(out)
    assert [line["iter"] for line in losses] == [1, 2] and all(v == v for line in losses for v in line.values())
    # It resumes from there (the fault gone).
    monkeypatch.setattr(RCNN, "forward", forward)
    assert train_cli.main(_args(tiny, out, "--iters", "4", "--checkpoint-every", "2", "--resume")) == 0
    tally.FAULTS.append("NaN loss at iteration 3: exit 1 'the loss is nan at iteration 3', last.pth (iteration 2) "
                        "intact and resumable")  # fmt: skip


def test_nan_gradients_at_a_checkpoint_do_not_reach_the_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(RCNN, "forward", nan_at(2, grad=True))
    out = tmp_path / "run"
    assert train_cli.main(_args(tiny, out, "--iters", "4", "--checkpoint-every", "1")) == 1
    assert "error:" in capsys.readouterr().err
    _check_intact(out, 1)

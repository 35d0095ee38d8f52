"""``python -m detector.train``: the out-of-the-box run on the synthetic set, and clear errors (exit 2),
a full disk included."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from detector import train as train_cli
from detector.data.synthetic import ensure_synthetic
from detector.modeling.rcnn import RCNN
from detector.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tests.full_disk import file_size_limit, limit_file_size, needs_rlimit_fsize


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ensure_synthetic(tmp_path_factory.mktemp("synthetic"), train=4, val=2, size=64, seed=0)


def _data_args(tiny) -> list[str]:
    return ["--train-images", str(tiny.train_images), "--train-ann", str(tiny.train_annotations),
            "--min-sizes", "64", "--max-size", "96", "--no-progress"]


def test_out_of_the_box_trains_small_r18_fpn_on_generated_synthetic_data(tmp_path, monkeypatch, caplog, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_cli, "SYNTHETIC", {"train": 4, "val": 2, "size": 64, "seed": 0})  # the real one: 200 + 50
    with caplog.at_level(logging.WARNING):
        code = train_cli.main(["--iters", "2", "--min-sizes", "64", "--max-size", "96", "--amp", "--no-progress",
                               "--device", "cpu"])
    assert code == 0
    assert (tmp_path / "data" / "synthetic" / "manifest.json").is_file()
    out = tmp_path / "runs" / "small_r18_fpn"
    assert {p.name for p in out.iterdir()} >= {"last.pth", "metrics.jsonl", "model_final.safetensors", "eval.json"}
    assert set(json.loads((out / "eval.json").read_text())) == {"bbox", "segm", "keypoints"}
    assert "--amp needs a CUDA device" in caplog.text
    assert "iterations: 2/2" in capsys.readouterr().out


def test_a_missing_annotation_file_is_exit_2_naming_it_without_traceback(tiny, tmp_path) -> None:
    missing = tmp_path / "nope.json"
    done = subprocess.run([sys.executable, "-m", "detector.train", "--train-images", str(tiny.train_images),
                           "--train-ann", str(missing), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"error: {missing}: no such file" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("content", ["{not json", '["a list"]', '{"images": []}'])
def test_a_bad_annotation_file_is_exit_2_naming_it(tiny, tmp_path, capsys, content) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code = train_cli.main(["--train-images", str(tiny.train_images), "--train-ann", str(bad), "--out", str(tmp_path)])
    assert code == 2
    assert str(bad) in capsys.readouterr().err


def test_a_missing_images_folder_is_exit_2_naming_it(tiny, tmp_path, capsys) -> None:
    code = train_cli.main(["--train-images", str(tmp_path / "nowhere"), "--train-ann", str(tiny.train_annotations),
                           "--out", str(tmp_path / "run")])
    assert code == 2
    assert f"images folder not found: {tmp_path / 'nowhere'}" in capsys.readouterr().err


def test_a_bad_validation_file_fails_before_training(tiny, tmp_path, capsys) -> None:
    code = train_cli.main(_data_args(tiny) + ["--val-images", str(tiny.val_images), "--val-ann",
                                              str(tmp_path / "val.json"), "--out", str(tmp_path / "run")])
    assert code == 2
    assert f"{tmp_path / 'val.json'}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_resume_without_a_checkpoint_and_bad_weights_are_exit_2(tiny, tmp_path, capsys) -> None:
    assert train_cli.main(_data_args(tiny) + ["--out", str(tmp_path / "run"), "--resume"]) == 2
    assert f"{tmp_path / 'run' / 'last.pth'}: no checkpoint to resume from" in capsys.readouterr().err
    weights = ["--weights", str(tmp_path / "w.pth")]
    assert train_cli.main(_data_args(tiny) + ["--out", str(tmp_path / "run")] + weights) == 2
    assert f"{tmp_path / 'w.pth'}: weights file not found" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--train-ann", "a.json"], ["--val-images", "val"], ["--iters", "0"],
                                  ["--iters", "3", "--epochs", "1"], ["--model", "nonet"], ["--lr-schedule", "poly"],
                                  ["--trainable-backbone-layers", "6"], ["--lr-steps", "3", "2"],
                                  ["--lr-steps", "2", "--lr-schedule", "cosine"],
                                  ["--weights", "w.pth", "--backbone-weights", "resnet50_imagenet"]])
def test_bad_arguments_are_exit_2(args, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        train_cli.main(args)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_a_frozen_bn_preset_without_weights_or_a_trunk_is_refused_before_anything_is_read(tiny, tmp_path,
                                                                                             capsys) -> None:
    code = train_cli.main(_data_args(tiny) + ["--model", "maskrcnn_r50_fpn", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: maskrcnn_r50_fpn freezes its trunk's BatchNorm statistics")
    assert "--backbone-weights resnet50_imagenet" in err and "train small_r18_fpn" in err
    assert not (tmp_path / "run").exists()


def test_a_trunk_file_or_name_that_does_not_fit_is_exit_2_saying_what_it_is(tiny, tmp_path, capsys) -> None:
    from tests.detector.test_weights_imagenet import _state_of_shape

    r101 = tmp_path / "resnet101.pth"
    torch.save(_state_of_shape("resnet101"), r101)
    args = _data_args(tiny) + ["--model", "maskrcnn_r50_fpn", "--out", str(tmp_path / "run")]
    assert train_cli.main(args + ["--backbone-weights", str(r101)]) == 2
    assert f"error: {r101}: a ResNet-101 trunk; maskrcnn_r50_fpn needs ResNet-50\n" == capsys.readouterr().err
    assert train_cli.main(args + ["--backbone-weights", "resnet9000"]) == 2
    assert "error: resnet9000: weights file not found, nor a catalogue name (its ImageNet trunks: resnet18_imagenet, " \
           in capsys.readouterr().err
    assert train_cli.main(args + ["--weights", str(r101)]) == 2  # the first try: now named for what it is
    assert (f"error: {r101}: a ResNet-101 trunk (an ImageNet classifier), not a detection model: pass it as "
            "--backbone-weights\n") == capsys.readouterr().err


def test_a_diverging_loss_stops_with_exit_1(tiny, tmp_path, monkeypatch, capsys) -> None:
    def nan_loss(self, images, targets):
        return {"loss_classifier": sum(p.sum() for p in self.parameters()) * float("nan")}

    monkeypatch.setattr(RCNN, "forward", nan_loss)
    assert train_cli.main(_data_args(tiny) + ["--out", str(tmp_path / "run"), "--iters", "2"]) == 1
    assert "the loss is nan at iteration 1" in capsys.readouterr().err


def test_a_corrupt_image_read_by_a_worker_is_exit_2_naming_it(tiny, tmp_path, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for path in tiny.train_images.iterdir():
        (images / path.name).write_bytes(b"not a png" if path.name == "000000.png" else path.read_bytes())
    args = ["--train-images", str(images), "--train-ann", str(tiny.train_annotations), "--min-sizes", "64",
            "--max-size", "96", "--no-progress", "--workers", "1", "--batch-size", "4", "--iters", "1"]
    assert train_cli.main(args + ["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "000000.png" in err and "Traceback" not in err


@needs_rlimit_fsize
def test_a_full_disk_at_a_checkpoint_is_exit_2_naming_it_and_keeps_the_last_one(tiny, tmp_path, capsys) -> None:
    """In this process (the subprocess version below is slow): the checkpoint at iteration 2 does not fit."""
    out = tmp_path / "run"
    args = _data_args(tiny) + ["--out", str(out), "--iters", "2", "--checkpoint-every", "1", "--log-every", "1"]
    assert train_cli.main(args + ["--stop-at", "1"]) == 0
    checkpoint = out / CHECKPOINT_NAME
    before = checkpoint.read_bytes()
    capsys.readouterr()
    with file_size_limit(len(before) // 2):
        assert train_cli.main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert f"error: {checkpoint}: File too large; the last checkpoint is intact" in err
    assert checkpoint.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["last.pth", "metrics.jsonl"]

    fresh = tmp_path / "fresh"  # no checkpoint yet: nothing to resume from, and the message does not promise one
    with file_size_limit(len(before) // 2):
        assert train_cli.main(_data_args(tiny) + ["--out", str(fresh), "--iters", "1"]) == 2
    assert f"error: {fresh / CHECKPOINT_NAME}: File too large; free some space and run again\n" in capsys.readouterr().err
    assert sorted(p.name for p in fresh.iterdir()) == ["metrics.jsonl"]


@pytest.mark.slow  # three runs of the CLI in subprocesses: about 40 s on a loaded 2-core machine
@needs_rlimit_fsize
def test_a_full_disk_is_one_line_naming_the_file_and_the_last_checkpoint_stays_whole(tiny, tmp_path) -> None:
    """The kernel refuses the write (a file-size limit, EFBIG, as a full disk gives ENOSPC): no mock.
    Run with ``make test-slow`` or ``pytest -m slow tests/detector/test_train_cli.py``."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "detector.train", *_data_args(tiny), "--out", str(out), "--iters", "4",
               "--log-every", "1", "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command + ["--stop-at", "2"], capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    checkpoint = out / CHECKPOINT_NAME
    before = checkpoint.read_bytes()

    # Resumed with room for the metrics lines but not for the next checkpoint (written at iteration 4).
    full = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300, env=env,
                          preexec_fn=limit_file_size(len(before) // 2))
    assert full.returncode == 2, full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {checkpoint}: File too large; the last checkpoint is intact: free some space and "
                      "run again with --resume"], full.stderr
    assert full.stderr.rstrip().endswith(errors[0]) and "Traceback" not in full.stderr
    assert checkpoint.read_bytes() == before and load_checkpoint(checkpoint)["iteration"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["last.pth", "metrics.jsonl"]  # no temporary file left

    done = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "iterations: 4/4" in done.stdout and (out / "model_final.safetensors").is_file()
    assert [json.loads(line)["iter"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def _can_mount_tmpfs(tmp_path) -> bool:
    where = tmp_path / "probe"
    where.mkdir()
    try:
        done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                               f"mount -t tmpfs -o size=64k tmpfs {where}"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.mark.slow  # two runs of the CLI in subprocesses: about 30 s on a loaded 2-core machine
def test_a_really_full_filesystem_is_one_line_and_the_last_checkpoint_stays_whole(tiny, tmp_path) -> None:
    """ENOSPC from a small tmpfs (mounted in a user namespace), with room for one checkpoint and a half:
    the new one cannot be written beside the old one, which must survive. Skips where user namespaces
    or tmpfs mounts are not allowed."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -rm)")
    run, full = tmp_path / "run", tmp_path / "full"
    command = [sys.executable, "-m", "detector.train", *_data_args(tiny), "--iters", "4", "--log-every", "1",
               "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command + ["--out", str(run), "--stop-at", "2"], capture_output=True, text=True,
                           timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    before = (run / CHECKPOINT_NAME).read_bytes()
    full.mkdir()
    script = (f'mount -t tmpfs -o size={len(before) * 3 // 2} tmpfs "$1" && cp "$2"/* "$1"/ && shift 2 && '
              f'"$@"; status=$?; cp {full}/{CHECKPOINT_NAME} {tmp_path}/after.pth; ls -A {full} > {tmp_path}/ls; '
              'exit $status')
    resumed = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(full),
                              str(run), *command, "--out", str(full), "--resume"],
                             capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 2, resumed.stderr
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {full / CHECKPOINT_NAME}: No space left on device; the last checkpoint is intact: "
                      "free some space and run again with --resume"], resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert (tmp_path / "after.pth").read_bytes() == before
    assert (tmp_path / "ls").read_text().split() == ["last.pth", "metrics.jsonl"]  # no temporary file left

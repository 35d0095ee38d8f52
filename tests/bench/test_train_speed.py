"""bench/train_speed.py at a tiny size: both models take their steps on the same batches."""

from __future__ import annotations

import json

from bench.train_speed import main, synthetic_batches


def test_synthetic_batches_are_the_same_for_the_same_seed():
    a, b = synthetic_batches("maskrcnn_r50_fpn", 1, 2, (64, 80)), synthetic_batches("maskrcnn_r50_fpn", 1, 2, (64, 80))
    for x, y in zip(a[0], b[0]):
        assert all((u == v).all() for u, v in zip(x, y))
    image, boxes, labels, masks, keypoints = a[0][0]
    assert image.shape == (3, 64, 80) and masks.shape == (3, 64, 80) and keypoints.shape == (3, 17, 3)
    assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 64).all()


def test_train_bench_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "train.json"
    assert main(["--models", "fasterrcnn_r50_fpn", "--size", "64", "64", "--batch", "1", "--iters", "1",
                 "--warmup", "0", "--threads", "1", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["ours_it_per_s"] > 0 and row["torchvision_it_per_s"] > 0 and len(row["ours_loss"]) == 1

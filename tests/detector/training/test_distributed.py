"""Two processes with gloo on the CPU, started by torchrun: DistributedDataParallel trains one model,
each process draws its own share of the data, each predicts its share of the validation images, and only
rank 0 scores them and writes.

Slow (two interpreters start and build the model): ``pytest -m slow tests/detector/training``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from detector.training.checkpoint import load_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_with_two_gloo_processes(tiny_synthetic, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
        "-m", "detector.train", "--device", "cpu", "--train-images", str(tiny_synthetic.train_images),
        "--train-ann", str(tiny_synthetic.train_annotations), "--iters", "2", "--batch-size", "1",
        "--min-sizes", "128", "--max-size", "213", "--log-every", "1", "--out", str(out), "--no-progress",
        "--val-images", str(tiny_synthetic.val_images), "--val-ann", str(tiny_synthetic.val_annotations),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("iterations: 2/2") == 1  # rank 0 reports
    state = load_checkpoint(out / "last.pth")
    assert state["iteration"] == 2
    assert len(state["rng"]) == len(state["sampler"]) == 2  # one of each per process
    # Each process drew one image per step from its half of the epoch: 2 batches consumed by each.
    assert [s["batch_in_epoch"] for s in state["sampler"]] == [2, 2]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["iter"] for line in lines] == [1, 2]  # written once, by rank 0
    assert (out / "model_final.safetensors").is_file()
    # Validation sharded over both ranks (each in the gather, or it would hang), scored once, by rank 0.
    scores = json.loads((out / "eval.json").read_text())
    assert "bbox" in scores and 0.0 <= scores["bbox"]["AP"] <= 1.0
    assert done.stdout.count("validation: ") + done.stderr.count("validation: ") == 1

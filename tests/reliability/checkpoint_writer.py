"""``python -m tests.reliability.checkpoint_writer OUT``: a process that forks checkpoint writers on demand,
for the kill -9 test (tests/reliability/test_training_faults.py).

It imports torch once and builds a small_r18_fpn-sized checkpoint. For each line read from stdin it
forks a child that writes OUT/last.pth with ``detector.training.checkpoint.atomic_save`` in a loop,
continuing from the iteration in the file, every model tensor filled with that iteration's number
(so a file mixing two writes would show); it prints the child's pid, waits for it to die (the test
kills it), and prints "reaped". Forking is safe here: nothing has started a thread.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from detector.modeling.presets import small_r18_fpn
from detector.modeling.rcnn import build_model
from detector.training.checkpoint import CHECKPOINT_NAME, atomic_save, capture_rng, load_checkpoint


def checkpoint(model: dict[str, torch.Tensor], iteration: int) -> dict:
    for tensor in model.values():
        tensor.fill_(iteration)
    return {"model": model, "optimizer": {"state": {}, "param_groups": []}, "iteration": iteration,
            "sampler": [{"epoch": 0, "batch_in_epoch": iteration}], "rng": [capture_rng()]}  # fmt: skip


def write_forever(path: Path, model: dict[str, torch.Tensor]) -> None:
    iteration = load_checkpoint(path)["iteration"] if path.is_file() else 0
    while True:
        iteration += 1
        atomic_save(checkpoint(model, iteration), path)


def main(out: Path) -> None:
    model = {k: v.float() for k, v in build_model(small_r18_fpn()).state_dict().items()}
    path = out / CHECKPOINT_NAME
    print("ready", flush=True)
    for _ in sys.stdin:
        pid = os.fork()
        if pid == 0:
            try:
                write_forever(path, model)
            finally:
                os._exit(1)
        print(pid, flush=True)
        os.waitpid(pid, 0)
        print("reaped", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

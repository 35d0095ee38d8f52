"""detector/distributed.py: one helper for training and evaluation under torchrun."""

from __future__ import annotations

import importlib
import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

from detector.distributed import (DistInfo, finish, gather, gather_to_all, init_distributed, max_over_ranks,
                                  mean_over_ranks, shard)


def test_shard_takes_every_world_size_th_item_from_the_rank_on():
    items = list(range(10))
    assert shard(items, DistInfo(rank=1, world_size=3)) == [1, 4, 7]
    shares = [shard(items, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert sorted(x for share in shares for x in share) == items


def test_single_process_passes_through(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx, device = init_distributed("cpu")
    assert ctx == DistInfo() and ctx.is_main and device == torch.device("cpu")
    assert shard(["a", "b"], ctx) == ["a", "b"]
    assert gather([{"x": 1}], ctx) == [{"x": 1}]
    assert gather_to_all({"x": 1}, ctx) == [{"x": 1}]
    assert mean_over_ranks({"loss": 0.5}, ctx, device) == {"loss": 0.5}
    assert max_over_ranks(3, ctx, device) == 3
    finish(ctx)


def test_an_unknown_backend_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="'mpi2'"):
        init_distributed("cpu", backend="mpi2")


def _gather_worker(rank: int, port: int, out_dir: str) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx, device = init_distributed("cpu")
    mine = shard(list(range(7)), ctx)
    gathered = gather([{"item": i, "rank": ctx.rank} for i in mine], ctx)
    means = mean_over_ranks({"loss": float(rank)}, ctx, device)  # 0 and 1
    largest = max_over_ranks(10 + rank, ctx, device)
    with open(f"{out_dir}/{rank}.json", "w") as f:
        json.dump({"ctx": [ctx.rank, ctx.world_size, ctx.local_rank, ctx.owns_group], "gathered": gathered,
                   "means": means, "largest": largest}, f)
    finish(ctx)


@pytest.mark.slow  # ~10 s: two fresh Python processes import torch; run with: make test-slow
def test_two_gloo_processes_gather_every_share_and_reduce(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The spawned processes find the worker by its module's name: pytest's own name for this module
    # ("detector.test_distributed") is not importable there, its name under the repository root is.
    worker = importlib.import_module("tests.detector.test_distributed")._gather_worker
    mp.spawn(worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        out = json.loads((tmp_path / f"{rank}.json").read_text())
        assert out["ctx"] == [rank, 2, rank, True]
        assert out["means"] == {"loss": 0.5} and out["largest"] == 11
        assert [g["item"] for g in out["gathered"]] == [0, 2, 4, 6, 1, 3, 5]
        assert [g["rank"] for g in out["gathered"]] == [0, 0, 0, 0, 1, 1, 1]

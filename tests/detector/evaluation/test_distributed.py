import importlib
import json
import socket

import pytest
import torch.multiprocessing as mp

from detector.evaluation.distributed import DistContext, finish, gather, init_distributed, shard


def test_shard_takes_every_world_size_th_item_from_the_rank_on():
    items = list(range(10))
    assert shard(items, DistContext(rank=1, world_size=3)) == [1, 4, 7]
    shares = [shard(items, DistContext(rank=r, world_size=3)) for r in range(3)]
    assert sorted(x for share in shares for x in share) == items


def test_single_process_passes_through(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed()
    assert ctx == DistContext() and ctx.is_main
    assert shard(["a", "b"], ctx) == ["a", "b"]
    assert gather([{"x": 1}], ctx) == [{"x": 1}]
    finish(ctx)


def _gather_worker(rank: int, port: int, out_dir: str) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = init_distributed()
    mine = shard(list(range(7)), ctx)
    gathered = gather([{"item": i, "rank": ctx.rank} for i in mine], ctx)
    with open(f"{out_dir}/{rank}.json", "w") as f:
        json.dump({"ctx": [ctx.rank, ctx.world_size, ctx.owns_group], "gathered": gathered}, f)
    finish(ctx)


@pytest.mark.slow  # ~10 s: two fresh Python processes import torch; run with: make test-slow
def test_two_gloo_processes_gather_every_share(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The spawned processes find the worker by its module's name: pytest's own name for this module
    # ("evaluation.test_distributed") is not importable there, its name under the repository root is.
    worker = importlib.import_module("tests.detector.evaluation.test_distributed")._gather_worker
    mp.spawn(worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        out = json.loads((tmp_path / f"{rank}.json").read_text())
        assert out["ctx"] == [rank, 2, True]
        assert [g["item"] for g in out["gathered"]] == [0, 2, 4, 6, 1, 3, 5]
        assert [g["rank"] for g in out["gathered"]] == [0, 0, 0, 0, 1, 1, 1]

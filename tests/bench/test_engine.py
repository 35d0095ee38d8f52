"""bench/engine.py at a tiny size: it runs every implementation in its own process, every mode, times
every stage and writes its JSON."""

from __future__ import annotations

import json

import torch

from bench.engine import STAGES, compare, main
from detector.structures import Detections


def test_engine_bench_runs_at_a_tiny_size(tmp_path, capsys):
    out = tmp_path / "engine.json"
    assert main(["--models", "maskrcnn_r50_fpn", "--size", "64", "96", "--threads", "1", "--repeat", "0",
                 "--modes", "exact", "fast", "--torchvision-kept-memory", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["cpu"]["flags"] and set(report["cpu"]["simd"]) <= set(report["cpu"]["flags"])  # what it ran on
    rows = report["rows"]
    assert [r["impl"] for r in rows] == ["torchvision", "torchvision+kept-memory", "ours-exact", "ours-fast"]
    assert [r["kept_memory"] for r in rows] == [False, True, True, True]
    # Counted over the pass alone: a first pass faults its memory in; its system time fits in its wall time
    # (a count since the process started would not); keeping freed memory means fewer faults.
    assert all(r["page_faults"] > 0 and 0 <= r["kernel_s"] <= r["total_s"] for r in rows), rows
    assert rows[1]["page_faults"] < rows[0]["page_faults"]
    assert rows[0]["detections"] == rows[1]["detections"] == rows[2]["detections"]  # the same model, bit for bit
    assert rows[2]["vs_torchvision"] == {"matched": 1.0, "matched_1px": 1.0, "max_score_diff": 0.0, "max_box_diff_px": 0.0}
    for row in rows[2:]:
        assert set(row["stages_s"]) == set(STAGES) and row["stages_s"]["backbone"] > 0 and row["stages_s"]["mask"] > 0
        assert row["speedup"] > 0 and row["speedup_range"][0] <= row["speedup"] <= row["speedup_range"][1]
    assert rows[3]["speedup_vs_exact"] > 0 and "speedup_vs_exact" not in rows[2]
    # "fast" is the exact model up to float rounding (tests/detector/modeling/test_fast_inference.py's bounds).
    assert rows[3]["vs_exact"]["matched_1px"] == 1.0 and rows[3]["vs_exact"]["max_score_diff"] < 5e-3
    assert "ours-fast" in capsys.readouterr().out


def test_compare_counts_matches_by_label_and_iou():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    ref = [Detections(boxes=boxes, scores=torch.tensor([0.9, 0.8]), labels=torch.tensor([1, 2]))]
    same = compare(ref, ref)
    assert same == {"matched": 1.0, "matched_1px": 1.0, "max_score_diff": 0.0, "max_box_diff_px": 0.0}
    relabelled = [Detections(boxes=boxes, scores=torch.tensor([0.9, 0.7]), labels=torch.tensor([1, 3]))]
    assert compare(ref, relabelled)["matched"] == compare(ref, relabelled)["matched_1px"] == 0.5


def test_our_stages_are_timed_with_the_two_syncs_torchvision_gets(monkeypatch):
    """A sync at every stage hook would slow ours on a GPU and not torchvision's (timed by ``_timed``: one
    sync before, one after): the stage timer syncs as often, and takes marks in between."""
    import bench.engine as engine
    from detector.modeling.presets import small_r18_fpn
    from detector.modeling.rcnn import build_model

    syncs = []
    monkeypatch.setattr(engine, "_sync", lambda device: syncs.append(device))
    model = build_model(small_r18_fpn()).eval()
    timer = engine.StageTimer(model, torch.device("cpu"))
    stages, dets = timer.run(lambda: model.predict([torch.rand(3, 64, 96)]))
    assert len(syncs) == 2 and len(dets) == 1
    assert set(stages) == {*STAGES, "total"} and stages["backbone"] > 0 and stages["mask"] > 0
    assert abs(sum(v for k, v in stages.items() if k != "total") - stages["total"]) < 1e-9
    seconds, _ = engine._timed(lambda: None, torch.device("cpu"))
    assert len(syncs) == 4  # torchvision's: the same two

"""bench/startup.py with the small preset and one run: it reaches the first forward pass and writes every
figure, with its runs, its range and the CPU it ran on."""

from __future__ import annotations

import json

from bench.startup import CLIS, main


def test_startup_bench_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "startup.json"
    assert main(["--presets", "small_r18_fpn", "--speeds", "exact", "--runs", "1", "--work-dir", str(tmp_path / "work"),
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["cpu"]["model"] and isinstance(report["cpu"]["flags"], list) and report["runs"] == 1
    results = report["results"]
    names = [f"help {cli}" for cli in CLIS] + ["argument error detector.predict", "import torch, torchvision"]
    names += [f"{phase} small_r18_fpn exact" for phase in ("imported", "loaded", "first forward")]
    assert set(names) <= set(results)
    for name in names:
        r = results[name]
        assert len(r["runs_s"]) == 1 and 0 < r["min_s"] == r["median_s"] == r["max_s"] < 600, name
    first = results["first forward small_r18_fpn exact"]
    assert 0 < results["imported small_r18_fpn exact"]["median_s"] <= results["loaded small_r18_fpn exact"]["median_s"]
    assert results["loaded small_r18_fpn exact"]["median_s"] <= first["median_s"]
    assert first["cpu"]["median_s"] > 0
    beyond = report["first_forward_beyond_import_torch"]["small_r18_fpn exact"]
    assert set(beyond) == {"wall_s", "cpu_s"}
    assert "first forward of small_r18_fpn exact" in capsys.readouterr().out

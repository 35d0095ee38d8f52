"""bench/predict.py at a tiny size: both loops write the same lines, and the report has every row."""

from __future__ import annotations

import json

from PIL import Image

from bench.predict import SIZES, cli_loop, main, make_images, plain_loop
from detector.predictor import Predictor


def test_the_two_loops_write_the_same_lines(tmp_path):
    paths = make_images(tmp_path, 3)
    assert [Image.open(p).size[::-1] for p in paths] == SIZES[:3]
    predictor = Predictor.from_preset("small_r18_fpn")
    plain_loop(predictor, paths, tmp_path / "plain.jsonl", batch_size=1)
    cli_loop(predictor, paths, tmp_path / "cli.jsonl", batch_size=1, workers=2)
    lines = {name: sorted(map(json.loads, (tmp_path / f"{name}.jsonl").read_text().splitlines()),
                          key=lambda line: line["file"]) for name in ("plain", "cli")}
    assert lines["plain"] == lines["cli"] and len(lines["cli"]) == 3


def test_the_bench_reports_each_loop(tmp_path):
    out = tmp_path / "predict.json"
    assert main(["--images", "2", "--batches", "1", "--workers", "1", "--repeat", "1", "--threads", "1",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["loop"] for r in report["rows"]] == ["plain", "cli", "decode"]
    assert all(r["images_per_s"] > 0 and len(r["seconds"]) == 1 for r in report["rows"])
    assert report["cpu"]["logical_cpus"] >= 1 and report["model"] == "small_r18_fpn"

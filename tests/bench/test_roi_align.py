"""bench/roi_align.py: torchvision's RoIAlign against the sparse product, timed on a head's shapes."""

from __future__ import annotations

import json

import pytest

from bench.roi_align import CASES, main, make_inputs


def test_the_cases_boxes_lie_in_their_images():
    for case in CASES:
        feature, rois, grad = make_inputs(case)
        n, _, h, w = case.feature
        assert rois.shape == (case.rois, 5) and set(rois[:, 0].tolist()) <= set(map(float, range(n)))
        assert (rois[:, 1:3] >= 0).all() and (rois[:, 3] <= w * case.stride).all() and (rois[:, 4] <= h * case.stride).all()
        assert grad.shape == (case.rois, case.feature[1], case.output, case.output)


def test_bench_times_both_and_finds_the_same_numbers(tmp_path, capsys):
    out = tmp_path / "roi_align.json"
    assert main(["--threads", "1", "--repeats", "2", "--cases", "small_r18_fpn keypoint head", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    row, = report["rows"]
    assert row["case"] == "small_r18_fpn keypoint head"
    assert row["max_abs_diff_pooled"] < 1e-5 and row["max_abs_diff_grad"] < 1e-4
    assert row["speedup_median"] == row["torchvision"]["median_ms"] / row["sparse"]["median_ms"]
    assert report["cpu"]["flags"] and report["threads"] == 1
    assert "small_r18_fpn keypoint head" in capsys.readouterr().out


def test_an_unknown_case_is_refused_with_the_names(capsys):
    with pytest.raises(SystemExit):
        main(["--cases", "no such head"])
    assert "small_r18_fpn mask head" in capsys.readouterr().err

"""bench/train_step.py: variants of a preset by their changes, timed on the same batches."""

from __future__ import annotations

import json

import pytest

from bench.train_step import main, parse_variant, with_changes
from detector.data.synthetic import ensure_synthetic
from detector.modeling.presets import get_preset


def test_with_changes_replaces_the_named_fields_only():
    base = get_preset("small_r18_fpn")
    cfg = with_changes(base, ["mask.conv_dim=64", "mask.train_rois_per_image=None", "box.batch_size_per_image=32"])
    assert cfg.mask.conv_dim == 64 and cfg.mask.train_rois_per_image is None and cfg.box.batch_size_per_image == 32
    assert cfg.mask.pool_size == base.mask.pool_size and cfg.backbone == base.backbone


@pytest.mark.parametrize("change, message", [
    ("mask.conv_dim", "part.field=value"),
    ("conv_dim=64", "part.field=value"),
    ("head.conv_dim=64", "no part 'head'"),
    ("mask.width=64", "mask has no field 'width'"),
    ("mask.conv_dim=sixty", "not a Python literal"),
])
def test_with_changes_refuses_what_it_cannot_apply(change, message):
    with pytest.raises(ValueError, match=message):
        with_changes(get_preset("small_r18_fpn"), [change])


def test_parse_variant():
    assert parse_variant("cap 8: mask.train_rois_per_image=8 mask.conv_dim=64") == (
        "cap 8", ["mask.train_rois_per_image=8", "mask.conv_dim=64"])
    with pytest.raises(ValueError, match="NAME|name"):
        parse_variant("mask.conv_dim=64")


def test_bench_times_each_variant_on_a_tiny_set(tmp_path):
    data = ensure_synthetic(tmp_path / "data", train=4, val=1, size=64, seed=0)
    out = tmp_path / "step.json"
    assert main(["--train-images", str(data.train_images), "--train-ann", str(data.train_annotations),
                 "--variant", "cap 1: mask.train_rois_per_image=1", "--steps", "2", "--warmup", "1",
                 "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["variant"] for r in result["rows"]] == ["preset", "cap 1"]
    assert all(r["steps"] == 2 and r["min_s"] > 0 for r in result["rows"])
    assert result["rows"][1]["changes"] == ["mask.train_rois_per_image=1"] and result["cpu"]["simd"]


def test_missing_weights_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--weights", str(tmp_path / "nope.safetensors")])
    assert "nope.safetensors: no such file" in capsys.readouterr().err

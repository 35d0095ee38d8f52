"""detector/export/backends.py and the export's refusals: what cannot run says so before any long work."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from detector.export.backends import BACKENDS, load_predictor
from detector.export.onnx_file import check_exportable, export_onnx
from detector.export.runtime import OnnxPredictor
from detector.modeling.presets import get_preset
from detector.modeling.rcnn import RCNN


def test_load_predictor_refuses_what_it_would_ignore(tmp_path):
    with pytest.raises(ValueError, match="backend must be one of"):
        load_predictor("tensorrt")
    with pytest.raises(ValueError, match="needs the ONNX file"):
        load_predictor("onnxruntime")
    with pytest.raises(ValueError, match="preset=small_r18_fpn would be ignored"):
        load_predictor("onnxruntime", "small_r18_fpn", onnx=tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="runs on the CPU"):
        load_predictor("onnxruntime", device="cuda", onnx=tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="read by backend 'onnxruntime' only"):
        load_predictor("torch", onnx=tmp_path / "m.onnx")
    assert BACKENDS == ("torch", "onnxruntime")


def test_onnx_predictor_names_a_file_that_is_not_ours(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        OnnxPredictor(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.onnx is not an ONNX model"):
        OnnxPredictor(bad)


def test_export_refuses_what_it_cannot_export(tmp_path):
    torch.manual_seed(0)
    cfg = get_preset("small_r18_fpn")
    model = RCNN(replace(cfg, mask=None, keypoint=None)).eval()
    with pytest.raises(ValueError, match="optimised copy"):
        check_exportable(model.optimize_for_inference())
    with pytest.raises(ValueError, match="box pooler 'pool'"):
        check_exportable(RCNN(replace(cfg, box=replace(cfg.box, pooler="pool"), mask=None, keypoint=None)))
    with pytest.raises(ValueError, match="opset must be at least 16"):
        export_onnx(model, tmp_path / "m.onnx", opset=13)
    assert not (tmp_path / "m.onnx").exists()


"""detector/weights/builtin.py: the shipped files are found, or a clear error says how to get them
(tests/test_wheel.py checks them in an installed wheel)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from detector.predictor import Predictor
from detector.weights import builtin
from detector.weights.builtin import builtin_file, builtin_weights

ROOT = Path(__file__).resolve().parents[2]


def test_the_builtin_model_is_found_and_other_presets_have_none():
    path = builtin_weights("small_r18_fpn")
    assert path is not None and path.read_bytes() == (ROOT / "weights" / "small_r18_fpn.safetensors").read_bytes()
    assert builtin_weights("fasterrcnn_r50_fpn") is None
    assert builtin_file("sample.png").is_file() and builtin_file("catalogue.json").is_file()


def test_a_checkout_that_is_not_installed_reads_its_weights_folder(monkeypatch):
    monkeypatch.setattr(builtin, "BUILTIN_PACKAGE", "detector.no_such_package")
    assert builtin_file("sample.png") == ROOT / "weights" / "sample.png"


def test_an_installation_without_the_builtin_files_says_so_instead_of_serving_a_random_model(monkeypatch, tmp_path):
    monkeypatch.setattr(builtin, "BUILTIN_PACKAGE", "detector.no_such_package")
    monkeypatch.setattr(builtin, "_CHECKOUT_DIR", tmp_path / "weights")
    with pytest.raises(ValueError, match=r"no built-in files \(small_r18_fpn.safetensors.*pip install \."):
        Predictor.from_preset("small_r18_fpn", speed="exact")
    with pytest.raises(ValueError, match=r"no built-in files \(catalogue.json"):
        builtin_file("catalogue.json")


def test_a_preset_without_builtin_weights_is_random_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="detector.predictor"):
        predictor = Predictor.from_preset("fasterrcnn_r50_fpn", speed="exact")
    assert predictor.weights_path is None
    assert "fasterrcnn_r50_fpn has no built-in weights" in caplog.text

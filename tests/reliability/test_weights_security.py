"""Weights as an attack surface: a pickle that would run code when loaded is refused wherever it is
handed to the service, and runs nothing; a file named as a catalogue entry whose SHA-256 is not the
catalogue's is refused before anything parses it.

(tests/detector/test_weights.py covers ``read_state_dict`` on a raw malicious pickle, and
test_weights_catalogue.py the hash refusal through ``Predictor.from_preset``; here it is the service.)
"""

from __future__ import annotations

import hashlib
import pickle
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

import detector.weights.catalogue as catalogue
import detector.weights.loading as loading
from api.main import create_app
from detector.modeling.presets import get_preset
from detector.modeling.rcnn import build_model
from detector.weights.catalogue import Entry
from tests.api.serving import PRESET, settings
from tests.reliability import tally
from tests.api.process import running

CATALOGUED_NAME = "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"  # an entry of weights/catalogue.json


class WritesMarker:
    """Unpickling this calls open(path, "w"): code run by loading a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _raw_pickle(path: Path, marker: Path) -> None:
    with path.open("wb") as f:
        pickle.dump({"backbone.conv1.weight": WritesMarker(marker)}, f)


def _torch_zip(path: Path, marker: Path) -> None:
    """torch.save's zip format, shaped as a training checkpoint with the payload under "model"."""
    torch.save({"model": {"backbone.conv1.weight": WritesMarker(marker)}, "iteration": 1}, path)


def _disguised(path: Path, marker: Path) -> None:
    _raw_pickle(path, marker)


def _detectron2_pickle(path: Path, marker: Path) -> None:
    """Detectron2's model_final .pkl layout (read by detector.weights.detectron2_pickle)."""
    with path.open("wb") as f:
        pickle.dump({"model": {"backbone.bottom_up.stem.conv1.weight": WritesMarker(marker)}, "__author__": "x"}, f)


MALICIOUS = [("evil.pth", _raw_pickle), ("evil-checkpoint.pth", _torch_zip), ("evil.safetensors", _disguised),
             ("model_final_evil.pkl", _detectron2_pickle)]


def _load_error(app, timeout_s: float = 60.0) -> str | None:
    """Start the app, wait for its model to load or fail; the failure (None when it loaded)."""
    service = app.state.service
    with TestClient(app):
        deadline = time.monotonic() + timeout_s
        while not service.ready and service.load_error is None:
            assert time.monotonic() < deadline, "the model neither loaded nor failed"
            time.sleep(0.02)
    return service.load_error


@pytest.mark.parametrize("name, write", MALICIOUS, ids=[name for name, _ in MALICIOUS])
def test_a_malicious_pickle_as_the_services_weights_is_refused_and_runs_nothing(tmp_path, name, write):
    marker, weights = tmp_path / "pwned", tmp_path / name
    write(weights, marker)
    error = _load_error(create_app(settings(preset=PRESET, weights=str(weights))))
    assert error is not None and name in error, error
    assert not marker.exists()
    tally.FAULTS.append(f"malicious pickle {name} as the weights: refused, marker absent")


def test_a_malicious_pickle_given_to_python_m_api_is_refused_and_runs_nothing(tmp_path):
    marker, weights = tmp_path / "pwned", tmp_path / "evil.pth"
    _raw_pickle(weights, marker)
    with running(tmp_path, "--weights", str(weights)) as server:
        server.wait_listening()
        ready = server.wait_readyz_says("failed")
        exit_code = server.terminate()
    assert ready.status_code == 503 and ready.json() == {"detail": "failed: see the server log"}
    assert "evil.pth: refused to load" in server.output()
    assert not marker.exists()
    assert exit_code == 0, server.output()
    tally.FAULTS.append("malicious pickle via python -m api --weights: 503, 'refused to load' in the log, marker absent, exit 0")


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every file the weights loaders parse (read_state_dict, and torch.load under it)."""
    seen: list[str] = []
    real_read, real_load = loading.read_state_dict, torch.load

    def read_state_dict(path, *args, **kwargs):
        seen.append(f"read_state_dict {Path(path).name}")
        return real_read(path, *args, **kwargs)

    def load(f, *args, **kwargs):
        seen.append(f"torch.load {Path(f).name if isinstance(f, (str, Path)) else f}")
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(loading, "read_state_dict", read_state_dict)
    monkeypatch.setattr(torch, "load", load)
    return seen


def _catalogued_file(tmp_path: Path) -> Path:
    """Valid weights for the small preset (they would load), under a catalogue entry's file name."""
    path = tmp_path / CATALOGUED_NAME
    torch.save(build_model(get_preset(PRESET)).state_dict(), path)
    return path


def test_a_catalogued_name_with_another_hash_is_refused_before_it_is_read(tmp_path, reads):
    path = _catalogued_file(tmp_path)
    error = _load_error(create_app(settings(preset=PRESET, weights=str(path))))
    assert error is not None and "does not match the catalogue" in error and CATALOGUED_NAME in error, error
    assert reads == []  # refused on its hash: nothing parsed it
    tally.FAULTS.append("catalogued file name with another SHA-256: refused, read_state_dict never called")


def test_a_catalogued_name_with_another_hash_runs_no_pickle(tmp_path, reads):
    marker, path = tmp_path / "pwned", tmp_path / CATALOGUED_NAME
    _raw_pickle(path, marker)
    error = _load_error(create_app(settings(preset=PRESET, weights=str(path))))
    assert error is not None and "does not match the catalogue" in error
    assert reads == [] and not marker.exists()


def test_the_same_file_with_the_catalogues_hash_is_read(tmp_path, reads, monkeypatch):
    """The control: the spy does see a read when the hash matches (so its silence above means something)."""
    path = _catalogued_file(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = Entry(name="test", preset=PRESET, url="file:///nowhere", file_name=CATALOGUED_NAME,
                  sha256_prefix=digest[:8], license="test", sha256=digest)  # fmt: skip
    monkeypatch.setattr(catalogue, "load_catalogue", lambda: {"test": entry})
    assert _load_error(create_app(settings(preset=PRESET, weights=str(path)))) is None
    assert reads[0] == f"read_state_dict {CATALOGUED_NAME}"

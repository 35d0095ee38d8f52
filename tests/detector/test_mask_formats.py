"""detector/mask_formats.py: the one list of mask formats, offered alike by the CLI, the service and the bench."""

from __future__ import annotations

import subprocess
import sys

import pydantic
import pytest

from api.schemas import DetectOptions
from bench.server import _parser
from detector.mask_formats import DEFAULT_MASK_FORMAT, MASK_FORMATS
from detector.predict import parse_args
from detector.predictor import Predictor


def test_the_cli_and_the_service_offer_the_same_formats() -> None:
    assert parse_args(["--out", "o.json", "a.png"]).masks == DEFAULT_MASK_FORMAT == DetectOptions().masks
    for name in MASK_FORMATS:
        assert parse_args(["--masks", name, "--out", "o.json", "a.png"]).masks == name
        assert DetectOptions(masks=name).masks == name
    with pytest.raises(SystemExit):
        parse_args(["--masks", "bitmap", "--out", "o.json", "a.png"])
    with pytest.raises(pydantic.ValidationError):
        DetectOptions(masks="bitmap")


def test_the_server_bench_offers_them_too() -> None:
    action = next(a for a in _parser()._actions if a.dest == "masks")
    assert tuple(action.choices) == MASK_FORMATS and action.default == DEFAULT_MASK_FORMAT


def test_to_json_refuses_another_format_naming_it() -> None:
    predictor = Predictor.__new__(Predictor)  # the format is checked before anything else is read
    with pytest.raises(ValueError, match="'bitmap'"):
        predictor.to_json(None, masks="bitmap")


def test_mask_formats_import_without_torch() -> None:
    code = "import sys, detector.mask_formats; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

"""detector/predictor.py, Predictor.from_preset: the model built on the meta device takes the weights
file's tensors, and predicts exactly what the same weights loaded into a built model predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.modeling.presets import get_preset
from detector.modeling.rcnn import build_model
from detector.predictor import Predictor, builtin_weights
from detector.weights import load_weights, save_weights
from detector.weights.model_metadata import model_config_for

PRESET = "small_r18_fpn"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The built-in weights where the repository ships them, else random ones saved to a file."""
    path = builtin_weights(PRESET)
    if path is None:
        path = tmp_path_factory.mktemp("weights") / "random.safetensors"
        torch.manual_seed(0)
        save_weights(build_model(get_preset(PRESET)), path)
    return path


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)


def test_from_preset_predicts_what_the_loaded_model_predicts(weights):
    _, cfg = model_config_for(PRESET, weights)  # the architecture the file was written with (it may predate the preset's)
    model = build_model(cfg)
    load_weights(model, weights)  # the usual way: built, initialised, then copied into
    (expected,) = Predictor(model, speed="exact").predict([_image()])
    (got,) = Predictor.from_preset(PRESET, weights, speed="exact").predict([_image()])
    assert len(got) == len(expected)
    for name in ("boxes", "scores", "labels", "mask_probs", "keypoints"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


def test_from_preset_leaves_nothing_on_the_meta_device(weights):
    model = Predictor.from_preset(PRESET, weights, speed="exact").model
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [t for m in model.modules() for v in vars(m).values() for t in (v if isinstance(v, list) else [v])
                if isinstance(t, torch.Tensor)]  # plain tensor attributes (anchor templates)
    assert tensors and not [t for t in tensors if t.is_meta]

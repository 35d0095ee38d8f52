"""detector/modeling/presets.py and preset_names.py: one list of names, one default, training recipes as data."""

from __future__ import annotations

import subprocess
import sys

import pytest

from detector.modeling.preset_names import DEFAULT_PRESET, PRESET_NAMES
from detector.modeling.presets import PRESETS, RECIPES, TrainRecipe, get_preset, train_recipe


def test_the_torch_free_names_are_the_builders_names() -> None:
    assert PRESET_NAMES == tuple(PRESETS)
    assert DEFAULT_PRESET in PRESETS


def test_preset_names_import_without_torch() -> None:
    code = "import sys, detector.modeling.preset_names; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_recipe_names_a_preset() -> None:
    assert set(RECIPES) <= set(PRESETS)


def test_linear_scaling_rule_is_torchvisions_recipe() -> None:
    recipe = train_recipe("maskrcnn_r50_fpn")
    assert recipe == TrainRecipe()
    assert recipe.lr(16) == pytest.approx(0.02) and recipe.lr(2) == pytest.approx(0.0025)


def test_a_fixed_rate_recipe_ignores_the_batch() -> None:
    recipe = train_recipe("small_r18_fpn")
    assert recipe.per_images is None
    assert recipe.lr(1) == recipe.lr(64) == pytest.approx(0.02)


def test_an_unknown_name_trains_with_torchvisions_recipe() -> None:
    assert train_recipe("custom") == TrainRecipe()


def test_a_batch_below_one_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="got 0"):
        TrainRecipe().lr(0)


def test_unknown_preset_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        get_preset("nope")

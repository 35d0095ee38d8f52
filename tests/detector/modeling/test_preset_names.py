"""detector/modeling/preset_names.py: the torch-free list of names is the presets' own."""

from detector.modeling.preset_names import PRESET_NAMES
from detector.modeling.presets import PRESETS


def test_the_names_are_the_presets():
    assert PRESET_NAMES == tuple(PRESETS)

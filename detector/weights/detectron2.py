"""Detectron2's weights files: its model zoo's checkpoints and the ImageNet trunks it trains from.

``read_state_dict`` (detector.weights.loading) reads a ``.pkl`` with the restricted unpickler of
``detectron2_pickle`` and a ``.pth`` with ``torch.load(weights_only=True)``; ``load_weights`` renames a
Detectron2 state_dict to our keys (``detectron2_keys``). This module adds the trunk files for
``detector.train --backbone-weights``: ``read_detectron2_trunk(path)`` gives a state_dict in
``ResNetBackbone``'s names from MSRA's ``R-50.pkl`` / ``R-101.pkl``, FAIR's ``X-101-32x8d.pkl`` (Caffe2
blob names) or a Detectron2-named trunk or detection checkpoint (its ``backbone.bottom_up``).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from detector.weights.detectron2_keys import convert_c2_trunk_state_dict, detectron2_trunk_state_dict
from detector.weights.loading import read_state_dict


def is_c2_trunk(state: dict[str, Tensor]) -> bool:
    """Whether ``state`` holds Caffe2 ResNet blobs (MSRA / FAIR ImageNet files)."""
    return "conv1_w" in state or "res2_0_branch2a_w" in state


def read_detectron2_trunk(path: str | Path) -> dict[str, Tensor]:
    """The ResNet / ResNeXt trunk in ``path`` as a state_dict of ``ResNetBackbone`` (conv1, bn1,
    layer1..4; no classifier), FrozenBN statistics included (mean 0, variance 1 where MSRA's files have
    none). ValueError naming the file when it holds no such trunk."""
    state = read_state_dict(path)
    trunk = convert_c2_trunk_state_dict(state, str(path)) if is_c2_trunk(state) else detectron2_trunk_state_dict(state)
    if "conv1.weight" not in trunk or "layer1.0.conv1.weight" not in trunk:
        raise ValueError(f"{path}: holds no ResNet trunk in Caffe2's or Detectron2's names")
    return trunk

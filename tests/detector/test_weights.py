import pickle
from dataclasses import replace

import pytest
import torch

from detector.modeling.presets import small_r18_fpn
from detector.modeling.rcnn import RCNN
from detector.weights import load_weights, read_state_dict, save_weights


class _WritesMarker:
    """Unpickling this calls open(path, 'w'): arbitrary code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"backbone.conv1.weight": _WritesMarker(marker)}, f)
    with pytest.raises(ValueError, match="evil.pth"):
        read_state_dict(bad)
    assert not marker.exists()


def test_missing_corrupt_and_mismatched_files_are_clear_errors(tmp_path):
    model = RCNN(small_r18_fpn())
    with pytest.raises(ValueError, match="not found"):
        load_weights(model, tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_weights(model, junk)
    other = RCNN(replace(small_r18_fpn(), class_names=("__background__", "a", "b"), keypoint_classes=("a",)))
    path = tmp_path / "other.safetensors"
    save_weights(other, path)
    with pytest.raises(ValueError, match="mis-shaped keys: .*cls_score"):
        load_weights(model, path)
    state = other.state_dict()
    state.pop("fpn.lateral_convs.0.0.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "keys.pth")
    with pytest.raises(ValueError, match=r"missing keys: fpn\.lateral_convs\.0\.0\.weight.*unexpected keys: extra\.weight"):
        load_weights(other, tmp_path / "keys.pth")


def test_safetensors_round_trip_in_half_precision(tmp_path):
    torch.manual_seed(0)
    model = RCNN(small_r18_fpn()).eval()
    path = tmp_path / "m.safetensors"
    save_weights(model, path, metadata={"preset": "small_r18_fpn"}, half=True)
    fresh = RCNN(small_r18_fpn()).eval()
    load_weights(fresh, path)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-3, rtol=1e-3, msg=k)

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


def _file_offsets(path) -> dict[str, int]:
    """Each tensor's byte offset in a safetensors file, from its header."""
    import json
    import struct

    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return {k: v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def test_assign_takes_the_files_mapped_tensors_without_a_copy(tmp_path):
    path = tmp_path / "small.safetensors"
    save_weights(RCNN(small_r18_fpn()), path)
    with torch.device("meta"):
        model = RCNN(small_r18_fpn())
    load_weights(model, path, assign=True)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    assert not [name for name, t in tensors.items() if t.is_meta]
    # Views of one mapping of the file: their addresses lie as far apart as their offsets in it.
    offsets = _file_offsets(path)
    names = sorted(offsets, key=offsets.get)
    first, last = names[0], names[-1]
    assert tensors[last].data_ptr() - tensors[first].data_ptr() == offsets[last] - offsets[first]
    built = RCNN(small_r18_fpn())
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in built.parameters()]


def test_assign_casts_a_half_precision_file_to_the_models_dtype(tmp_path):
    source = RCNN(small_r18_fpn())
    path = tmp_path / "half.safetensors"
    save_weights(source, path, half=True)
    with torch.device("meta"):
        model = RCNN(small_r18_fpn())
    load_weights(model, path, assign=True)
    weight = model.state_dict()["backbone.conv1.weight"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, source.state_dict()["backbone.conv1.weight"].half().float())


def test_saving_over_a_mapped_file_leaves_its_readers_weights(tmp_path):
    path = tmp_path / "w.safetensors"
    torch.manual_seed(0)
    save_weights(RCNN(small_r18_fpn()), path)
    mapped = read_state_dict(path)  # memory-mapped
    kept = {k: v.clone() for k, v in mapped.items()}
    torch.manual_seed(1)
    save_weights(RCNN(small_r18_fpn()), path)  # a new file renamed over the old one
    assert all(torch.equal(mapped[k], kept[k]) for k in kept)
    assert not torch.equal(read_state_dict(path)["backbone.conv1.weight"], kept["backbone.conv1.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temporary file left

"""Detectron2's .pkl files are read by an unpickler that rebuilds numpy arrays and nothing else."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from detector.weights import read_state_dict
from detector.weights.detectron2_pickle import read_detectron2_pickle


class _WritesMarker:
    """Unpickling this calls open(path, "w"): code run by loading a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 wrote its str (BINSTRING), as Detectron1 / Caffe2 files hold them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _py2_pickle(obj) -> bytes:
    """``obj`` pickled as by Python 2 and numpy 1 (``numpy.core``, byte strings as str)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    data = buf.getvalue().replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in data and b"_codecs" not in data
    return data


def _arrays():
    g = np.random.default_rng(0)
    return {"res2_0_branch2a_w": g.standard_normal((8, 4, 1, 1)).astype(np.float32),
            "res2_0_branch2a_bn_s": g.standard_normal(8).astype(np.float32),
            "iteration_count": np.array([3], dtype=np.int64)}


def _assert_same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k].dtype == torch.from_numpy(v).dtype and torch.equal(got[k], torch.from_numpy(v))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_model_zoo_layout_loads_with_any_protocol(tmp_path, protocol):
    path = tmp_path / "model_final_abc123.pkl"
    arrays = _arrays()
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo"}, protocol=protocol))
    _assert_same(read_detectron2_pickle(path), arrays)
    _assert_same(read_state_dict(path), arrays)  # the loader's one entry point dispatches on .pkl


def test_python2_latin1_pickle_with_numpy_core_names_loads(tmp_path):
    path = tmp_path / "R-50.pkl"
    arrays = _arrays()
    momentum = {"res2_0_branch2a_w_momentum": np.zeros((8, 4, 1, 1), np.float32)}
    path.write_bytes(_py2_pickle({"blobs": {**arrays, **momentum}}))
    _assert_same(read_detectron2_pickle(path), arrays)  # Caffe2's optimiser state dropped


def test_imagenet_layout_without_model_or_blobs_loads(tmp_path):
    path = tmp_path / "X-101-32x8d.pkl"
    arrays = _arrays()
    path.write_bytes(_py2_pickle(arrays))
    _assert_same(read_detectron2_pickle(path), arrays)


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "model_final_evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"backbone.bottom_up.stem.conv1.weight": _WritesMarker(marker)}},
                                  protocol=protocol))
    with pytest.raises(ValueError, match=r"model_final_evil.pkl: refused to load .*(builtins|io)\.open"):
        read_state_dict(path)
    assert not marker.exists()


def test_codecs_encode_only_rebuilds_latin1_bytes(tmp_path):
    """``_codecs.encode`` is the one function besides numpy's that a pickle may call, and only as bytes'
    rebuilder: another codec is refused."""
    path = tmp_path / "codec.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x08\x00\x00\x00rot_13\x00\x86R.".replace(
        b"X\x08\x00\x00\x00rot_13\x00", b"X\x06\x00\x00\x00rot_13"))
    with pytest.raises(ValueError, match="codec.pkl: refused to load .*rot_13"):
        read_detectron2_pickle(path)


def test_object_arrays_and_non_arrays_are_refused(tmp_path):
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.array([1, "a"], dtype=object)}}))
    with pytest.raises(ValueError, match="objects.pkl"):
        read_detectron2_pickle(path)
    path.write_bytes(pickle.dumps({"model": {"w": [1.0, 2.0]}}))
    with pytest.raises(ValueError, match="objects.pkl: w is a list, not a numeric array"):
        read_detectron2_pickle(path)
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="objects.pkl: does not hold a dict"):
        read_detectron2_pickle(path)

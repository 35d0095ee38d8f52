import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from detector.predict import main
from detector.weights.builtin import builtin_file
from tests.process_state import glibc_only, state_after


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "scene.png"
    Image.fromarray(rng.integers(0, 255, (90, 140, 3), dtype=np.uint8)).save(path)
    return path


def test_writes_one_object_per_image_in_the_schema(tmp_path, image_file):
    out = tmp_path / "out.json"
    assert main(["--model", "small_r18_fpn", "--score-threshold", "0", "--out", str(out), str(image_file)]) == 0
    (result,) = json.loads(out.read_text())
    assert result["file"] == str(image_file) and (result["width"], result["height"]) == (140, 90)
    assert len(result["detections"]) > 0
    for d in result["detections"]:
        x1, y1, x2, y2 = d["bbox"]
        assert 0 <= x1 <= x2 <= 140 and 0 <= y1 <= y2 <= 90
        assert 0 <= d["score"] <= 1 and d["category"] in ("circle", "square", "triangle", "person")
        assert mask_util.decode({"size": d["mask"]["size"], "counts": d["mask"]["counts"].encode()}).shape == (90, 140)
        if d["category"] == "person":
            assert len(d["keypoints"]) == 17 and all(len(k) == 3 for k in d["keypoints"])
        else:
            assert "keypoints" not in d


def test_keypoints_only_for_persons(tmp_path):
    # The built-in model's sample image: a circle, a triangle and persons above 0.5.
    out = tmp_path / "out.json"
    assert main(["--model", "small_r18_fpn", "--out", str(out), str(builtin_file("sample.png"))]) == 0
    (result,) = json.loads(out.read_text())
    found = {(d["category"], "keypoints" in d) for d in result["detections"]}
    assert found == {("circle", False), ("triangle", False), ("person", True)}


def test_unreadable_images_are_named(tmp_path, image_file, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    out = tmp_path / "out.json"
    assert main(["--out", str(out), str(image_file), str(broken)]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert main(["--out", str(out), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert not out.exists()


def test_speed_modes_give_the_same_detections(tmp_path, image_file):
    """--speed exact runs the model as it is; fast folds and reorders it: the same detections up to float
    rounding (detector/modeling/fast_inference.py)."""
    results = {}
    for speed in ("exact", "fast"):
        out = tmp_path / f"{speed}.json"
        assert main(["--speed", speed, "--score-threshold", "0", "--masks", "none", "--out", str(out), str(image_file)]) == 0
        results[speed] = json.loads(out.read_text())[0]["detections"]
    assert len(results["exact"]) == len(results["fast"]) > 0
    for e in results["exact"]:  # near-equal scores may swap places: match each by category and box
        assert any(e["category"] == f["category"] and abs(e["score"] - f["score"]) < 1e-3
                   and np.allclose(e["bbox"], f["bbox"], atol=0.05) for f in results["fast"])


def test_an_unknown_speed_is_refused(tmp_path, image_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--speed", "ludicrous", "--out", str(tmp_path / "out.json"), str(image_file)])
    assert exit_info.value.code == 2
    assert "--speed" in capsys.readouterr().err


@glibc_only
@pytest.mark.parametrize("flag, kept", [([], True), (["--no-keep-freed-memory"], False)])
def test_keeps_freed_memory_unless_told_not_to(tmp_path, image_file, flag, kept):
    """The CLI, not the Predictor, applies detector.memory's setting: on by default, off with the flag."""
    argv = ["--model", "small_r18_fpn", "--speed", "exact", "--out", str(tmp_path / "out.json"), str(image_file), *flag]
    state = state_after(f"from detector.predict import main\nassert main({argv!r}) == 0")
    assert state["memory_applied"] is (True if kept else None)
    assert state["big_block_mmapped"] is not kept


def test_a_preset_that_disagrees_with_the_weights_is_named_beside_theirs(tmp_path, image_file, capsys):
    weights = builtin_file("small_r18_fpn.safetensors")  # names its model: small_r18_fpn
    if not weights.is_file():
        pytest.skip(f"{weights}: the built-in weights are not in this checkout")
    assert main(["--model", "maskrcnn_r50_fpn", "--weights", str(weights), "--out", str(tmp_path / "o.json"),
                 str(image_file)]) == 2
    err = capsys.readouterr().err
    assert "holds a small_r18_fpn model" in err and "not the maskrcnn_r50_fpn" in err and str(weights) in err

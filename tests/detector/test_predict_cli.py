import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from detector.predict import main


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
        assert len(d["keypoints"]) == 17 and all(len(k) == 3 for k in d["keypoints"])


def test_unreadable_images_are_named(tmp_path, image_file, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    out = tmp_path / "out.json"
    assert main(["--out", str(out), str(image_file), str(broken)]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert main(["--out", str(out), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert not out.exists()

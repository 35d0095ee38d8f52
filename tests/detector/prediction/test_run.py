"""detector/prediction/run.py: the loop, with a stand-in predictor (the CLI tests run the real model)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detector.prediction.jsonl import LineWriter
from detector.prediction.loader import bucket
from detector.prediction.run import predict_files
from detector.structures import Detections


class CountingPredictor:
    """Two detections per image, scored 0.9 and 0.1; remembers the batches it was given."""

    def __init__(self):
        self.batches = []

    def predict(self, images):
        self.batches.append([image.shape for image in images])
        return [Detections(boxes=torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]]),
                           scores=torch.tensor([0.9, 0.1]), labels=torch.tensor([1, 1]), image_size=image.shape[:2])
                for image in images]


def _entry(path, det):
    return {"file": str(path), "scores": [round(s, 2) for s in det.scores.tolist()]}


@pytest.fixture
def files(tmp_path):
    paths = []
    for i, (h, w) in enumerate([(30, 40), (40, 30), (60, 80), (30, 40), (45, 60)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"nope")
    paths.insert(2, tmp_path / "bad.png")
    return paths


def test_every_file_gets_one_line_and_batches_hold_one_bucket(tmp_path, files):
    predictor, out = CountingPredictor(), tmp_path / "out.jsonl"
    with LineWriter(out) as writer:
        summary = predict_files(predictor, files, writer, _entry, score_threshold=0.5, batch_size=3, workers=2)
    lines = {line["file"]: line for line in map(json.loads, out.read_text().splitlines())}
    assert sorted(lines) == sorted(map(str, files))
    assert "bad.png: not a readable image" in lines[str(files[2])]["error"]
    assert all(lines[str(p)]["scores"] == [0.9] for p in files if p.name != "bad.png")  # the threshold applied
    assert (summary.images, summary.failed, summary.detections) == (5, 1, 5)
    assert all(len(batch) <= 3 and len({bucket(shape) for shape in batch}) == 1 for batch in predictor.batches)
    # 4:3 landscape four times (a batch of 3, then 1), 3:4 portrait once
    assert sorted(len(batch) for batch in predictor.batches) == [1, 1, 3]


def test_fail_fast_raises_naming_the_file_and_keeps_the_lines_before(tmp_path, files):
    out = tmp_path / "out.jsonl"
    with LineWriter(out) as writer, pytest.raises(ValueError, match="bad.png: not a readable image"):
        predict_files(CountingPredictor(), files, writer, _entry, score_threshold=0.5, batch_size=1, workers=1,
                      fail_fast=True)
    assert [json.loads(line)["file"] for line in out.read_text().splitlines()] == [str(files[0]), str(files[1])]

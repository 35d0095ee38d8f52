"""detector/prediction/loader.py: decoding ahead in threads, in order; batches of one size bucket."""

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.prediction import loader
from detector.prediction.loader import Decoded, bucket, decode_ahead, size_batches


def _image(h: int, w: int) -> Decoded:
    return Decoded(Path(f"{h}x{w}.png"), image=np.zeros((h, w, 3), np.uint8))


def test_decodes_every_file_in_order_and_reports_the_unreadable(tmp_path):
    paths = []
    for i in range(7):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((10 + i, 20, 3), i, np.uint8)).save(paths[-1])
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths.insert(3, tmp_path / "bad.jpg")
    got = list(decode_ahead(paths, workers=3, ahead=4))
    assert [d.path for d in got] == paths
    assert "bad.jpg: not a readable image" in got[3].error and got[3].image is None
    ok = [d for d in got if d.error is None]
    assert [d.image.shape for d in ok] == [(10 + i, 20, 3) for i in range(7)]
    assert [int(d.image[0, 0, 0]) for d in ok] == list(range(7))


def test_decoding_runs_at_most_ahead_files_beyond_the_caller(monkeypatch):
    started, lock = [], threading.Lock()

    def fake_decode(path):
        with lock:
            started.append(path)
        return Decoded(path, image=np.zeros((1, 1, 3), np.uint8))

    monkeypatch.setattr(loader, "_decode", fake_decode)
    stream = decode_ahead([Path(str(i)) for i in range(100)], workers=2, ahead=5)
    next(stream)
    assert len(started) <= 6  # the one taken and 5 ahead
    stream.close()
    assert len(started) <= 6  # closing early starts nothing more


def test_one_aspect_ratio_is_one_bucket_whatever_the_size():
    assert bucket((480, 640, 3)) == bucket((960, 1280, 3)) == bucket((300, 400)) == (25, 34)
    assert bucket((640, 480, 3)) == (34, 25)  # portrait pads otherwise
    assert bucket((480, 640)) != bucket((480, 720))


def test_batches_hold_one_bucket_and_failures_go_alone_at_once():
    bad = Decoded(Path("bad.jpg"), error="bad.jpg: not a readable image")
    items = [_image(30, 40), _image(40, 30), bad, _image(60, 80), _image(80, 60), _image(90, 120)]
    batches = list(size_batches(items, batch_size=2, max_waiting=8))
    assert batches[0] == [bad]  # nothing waits behind a full batch for it
    assert [[d.path.name for d in b] for b in batches[1:]] == [["30x40.png", "60x80.png"],
                                                                ["40x30.png", "80x60.png"], ["90x120.png"]]


def test_past_max_waiting_the_fullest_bucket_goes_unfilled():
    items = [_image(30, 40), _image(60, 80), _image(10, 90), _image(40, 30), _image(300, 400)]
    shapes = lambda batches: [[d.image.shape[:2] for d in b] for b in batches]  # noqa: E731
    assert shapes(size_batches(items, batch_size=3, max_waiting=3)) == [
        [(30, 40), (60, 80)], [(10, 90)], [(40, 30)], [(300, 400)]]  # the 4th waiting image sends the fullest
    assert shapes(size_batches(items, batch_size=3, max_waiting=8)) == [
        [(30, 40), (60, 80), (300, 400)], [(10, 90)], [(40, 30)]]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="batch_size <= max_waiting"):
        list(size_batches([], batch_size=4, max_waiting=2))
    with pytest.raises(ValueError, match="at least 1"):
        list(decode_ahead([], workers=0, ahead=1))

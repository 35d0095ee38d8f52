import hashlib
import json
from dataclasses import replace

import pytest
import torch

from detector.modeling.backbone import set_frozen_bn_eps
from detector.modeling.presets import get_preset
from detector.modeling.rcnn import RCNN
from detector.modeling.transform import InputConfig
from detector.predictor import Predictor
from detector.weights import load_weights
from detector.weights.__main__ import main
from detector.weights.catalogue import Entry, download, load_catalogue
from detector.weights.loading import frozen_bn_eps_of
from bench.reference import torchvision_reference


def _entry(path, digest, **kw):
    return Entry(name="test", preset="small_r18_fpn", url=path.as_uri(), file_name="model.pth",
                 sha256_prefix=digest[:8], license="test", **kw)


def test_catalogue_lists_the_published_checkpoints(capsys):
    catalogue = load_catalogue()
    assert {"fasterrcnn_r50_fpn_coco", "maskrcnn_r50_fpn_coco", "keypointrcnn_r50_fpn_coco"} <= set(catalogue)
    for entry in catalogue.values():
        assert entry.sha256_prefix in entry.file_name and entry.url.endswith(entry.file_name)
        get_preset(entry.preset)
    assert main(["list"]) == 0
    assert "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth" in capsys.readouterr().out


def test_download_from_a_local_address_verifies_and_caches(tmp_path):
    source = tmp_path / "published.pth"
    source.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    path = download(_entry(source, digest), cache)
    assert path == cache / "model.pth" and path.read_bytes() == source.read_bytes()
    assert download(_entry(source, digest), cache) == path  # cached: verified, not fetched again
    # Full hash given: all of it must match.
    assert download(_entry(source, digest, sha256=digest), tmp_path / "c2").is_file()


def test_hash_mismatch_and_offline_are_clear_errors(tmp_path):
    source = tmp_path / "published.pth"
    source.write_bytes(b"tampered")
    with pytest.raises(ValueError, match="does not match"):
        download(_entry(source, "0" * 64), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # nothing partial left behind
    with pytest.raises(ValueError, match="offline"):
        download(_entry(tmp_path / "nowhere.pth", "0" * 64), tmp_path / "cache")


def test_catalogued_file_with_wrong_hash_is_refused_before_reading(tmp_path):
    bad = tmp_path / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    bad.write_bytes(b"not the published file")
    with pytest.raises(ValueError, match="does not match"):
        Predictor.from_preset("maskrcnn_r50_fpn", bad)
    assert main(["verify", str(bad)]) == 2


def test_convert_to_safetensors_keeps_detections_and_eps(tmp_path):
    tv = torchvision_reference("fasterrcnn_r50_fpn", eps=0.0)
    src = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), src)
    dst = tmp_path / "tv.safetensors"
    assert main(["convert", str(src), str(dst), "--preset", "fasterrcnn_r50_fpn"]) == 0
    cfg = replace(get_preset("fasterrcnn_r50_fpn"), input=InputConfig(min_size=256, max_size=320))
    a, b = RCNN(cfg).eval(), RCNN(cfg).eval()
    load_weights(a, src)
    set_frozen_bn_eps(b, 1e-5)
    load_weights(b, dst)
    assert frozen_bn_eps_of(b) == 0.0
    image = [torch.rand(3, 200, 240, generator=torch.Generator().manual_seed(0))]
    da, db = a.predict(image)[0], b.predict(image)[0]
    assert len(da) > 0 and torch.equal(da.boxes, db.boxes) and torch.equal(da.labels, db.labels)


def test_sha256_of_reads_a_file_of_several_chunks(tmp_path):
    from detector.weights.catalogue import sha256_of

    path = tmp_path / "w.bin"
    data = bytes(range(256)) * 5000  # 1.2 MiB: more than one 1 MiB read
    path.write_bytes(data)
    assert sha256_of(path) == sha256_of(str(path)) == hashlib.sha256(data).hexdigest()

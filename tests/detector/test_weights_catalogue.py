import contextlib
import functools
import hashlib
import http.server
import threading
from pathlib import Path
from dataclasses import replace

import pytest
import torch

from detector.modeling.backbone import set_frozen_bn_eps
from detector.modeling.presets import get_preset
from detector.modeling.rcnn import RCNN
from detector.modeling.transform import InputConfig
from detector.predictor import Predictor
from detector.weights import load_weights
import detector.weights.__main__ as weights_cli
from detector.weights.__main__ import main
import detector.weights.catalogue as catalogue
from detector.weights.catalogue import Entry, download, load_catalogue, verify_if_catalogued
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
        assert (entry.preset is None) != (entry.trunk is None)  # a detection model or an ImageNet trunk
        if entry.preset is not None:
            get_preset(entry.preset)
    assert main(["list"]) == 0
    assert "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth" in capsys.readouterr().out


def test_v2_entries_are_torchvisions_published_files_and_ap():
    """The v2 entries name the files of torchvision's weights enums, with the AP their meta publishes."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_V2_Weights, MaskRCNN_ResNet50_FPN_V2_Weights

    catalogue = load_catalogue()
    for name, weights in (("fasterrcnn_r50_fpn_v2_coco", FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1),
                          ("maskrcnn_r50_fpn_v2_coco", MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1)):
        entry = catalogue[name]
        assert entry.url == weights.url and entry.preset == name.removesuffix("_coco")
        assert entry.file_name.endswith(f"-{entry.sha256_prefix}.pth") and entry.frozen_bn_eps is None
        published = {k.replace("_map", "_ap"): v for k, v in weights.meta["_metrics"]["COCO-val2017"].items()}
        assert entry.coco_val2017 == published


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
    from detector.weights.model_metadata import model_config_for

    # the converted file names its model: no preset needed to rebuild it
    assert model_config_for(None, dst) == ("fasterrcnn_r50_fpn", get_preset("fasterrcnn_r50_fpn"))
    cfg = replace(get_preset("fasterrcnn_r50_fpn"), input=InputConfig(min_size=256, max_size=320))
    a, b = RCNN(cfg).eval(), RCNN(cfg).eval()
    load_weights(a, src)
    set_frozen_bn_eps(b, 1e-5)
    load_weights(b, dst)
    assert frozen_bn_eps_of(b) == 0.0
    image = [torch.rand(3, 200, 240, generator=torch.Generator().manual_seed(0))]
    da, db = a.predict(image)[0], b.predict(image)[0]
    assert len(da) > 0 and torch.equal(da.boxes, db.boxes) and torch.equal(da.labels, db.labels)


def test_a_converted_v2_file_names_its_preset_and_gives_torchvisions_detections(tmp_path):
    """torchvision's v2 Mask R-CNN (BatchNorm2d, their step counters included) -> safetensors -> a Predictor
    that needs no preset: torchvision's detections, bit for bit."""
    from bench.parity import compare

    tv = torchvision_reference("maskrcnn_r50_fpn_v2", min_size=800, max_size=1333)
    src, dst = tmp_path / "tv.pth", tmp_path / "v2.safetensors"
    torch.save(tv.state_dict(), src)
    assert main(["convert", str(src), str(dst), "--preset", "maskrcnn_r50_fpn_v2"]) == 0
    predictor = Predictor.from_preset(None, dst, speed="exact")
    assert predictor.name == "maskrcnn_r50_fpn_v2" and predictor.has_masks
    image = torch.randint(0, 256, (200, 240, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    det = predictor.predict([image.numpy()])[0]
    with torch.no_grad():
        ref = tv([image.permute(2, 0, 1).float() / 255])[0]
    assert len(det) > 10 and compare(ref, det)["identical"]


def test_sha256_of_reads_a_file_of_several_chunks(tmp_path):
    from detector.weights.catalogue import sha256_of

    path = tmp_path / "w.bin"
    data = bytes(range(256)) * 5000  # 1.2 MiB: more than one 1 MiB read
    path.write_bytes(data)
    assert sha256_of(path) == sha256_of(str(path)) == hashlib.sha256(data).hexdigest()


# ---- known by content: renamed files, tampered files, the full SHA-256 recorded at the first download


def _with_prefix(data: bytes, prefix: str) -> bytes:
    """Other bytes whose SHA-256 starts with ``prefix``: a file that a prefix alone cannot tell apart
    (brute force; the test entries' 2-digit prefixes take a few hundred tries, torchvision's 8 digits
    about 4 billion)."""
    for i in range(1 << 16):
        other = data + i.to_bytes(4, "little")
        if hashlib.sha256(other).hexdigest().startswith(prefix):
            return other
    raise AssertionError(f"no variant with prefix {prefix}")


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A published file, its catalogue entry (a 2-digit prefix, no full hash, as torchvision's entries)
    as the whole catalogue, and an empty cache."""
    data = b"published weights" * 1000
    digest = hashlib.sha256(data).hexdigest()
    source = tmp_path / "published.pth"
    source.write_bytes(data)
    entry = Entry(name="test", preset="small_r18_fpn", url=source.as_uri(), file_name="model.pth",
                  sha256_prefix=digest[:2], license="test")
    for module in (catalogue, weights_cli):
        monkeypatch.setattr(module, "load_catalogue", lambda path=None: {"test": entry})
    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path / "cache"))
    return entry, data, digest


@contextlib.contextmanager
def _loopback_server(directory):
    """An HTTP server on 127.0.0.1 serving ``directory``; yields its base address."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_renamed_catalogued_file_is_known_by_its_bytes(tmp_path, published, capsys):
    entry, data, digest = published
    renamed = tmp_path / "anything-else.bin"
    renamed.write_bytes(data)
    assert verify_if_catalogued(renamed) == entry
    assert main(["verify", str(renamed)]) == 0
    assert capsys.readouterr().out.strip() == f"{renamed}: OK ({digest}, test)"
    unknown = tmp_path / "mine.pth"
    unknown.write_bytes(_with_prefix(b"my own weights", "f" if digest[0] != "f" else "e"))
    assert verify_if_catalogued(unknown) is None  # neither its name nor its hash claims an entry
    assert main(["verify", str(unknown)]) == 2
    assert "neither its SHA-256 nor its name is in the catalogue" in capsys.readouterr().err


def test_a_tampered_file_under_a_catalogued_name_is_refused_naming_file_entry_and_hash(tmp_path, published, capsys):
    entry, data, digest = published
    tampered = tmp_path / "model.pth"
    tampered.write_bytes(data.replace(b"weights", b"backdoor", 1))
    bad = hashlib.sha256(tampered.read_bytes()).hexdigest()
    assert not bad.startswith(entry.sha256_prefix)
    with pytest.raises(ValueError) as refused:
        verify_if_catalogued(tampered)
    assert str(refused.value) == (f"{tampered}: SHA-256 {bad} does not match the catalogue's SHA-256 prefix for "
                                  f"catalogue entry test ({entry.sha256_prefix}...); refusing to use it")
    assert main(["verify", str(tampered)]) == 2
    assert f"error: {tampered}: SHA-256 {bad} does not match" in capsys.readouterr().err


def test_the_first_download_records_the_full_sha256_and_a_later_change_is_caught(tmp_path, published, capsys,
                                                                                 monkeypatch):
    entry, data, digest = published
    served = tmp_path / "served"
    served.mkdir()
    (served / entry.file_name).write_bytes(data)
    cache = tmp_path / "cache"
    with _loopback_server(served) as base:
        entry = replace(entry, url=f"{base}/{entry.file_name}")
        monkeypatch.setattr(weights_cli, "load_catalogue", lambda path=None: {"test": entry})
        assert main(["download", "test"]) == 0  # python -m detector.weights download test, over HTTP
    path = Path(capsys.readouterr().out.strip())
    assert path == cache / "model.pth" and path.read_bytes() == data
    record = cache / "model.pth.sha256"
    assert record.read_text() == f"{digest}  model.pth\n"  # sha256sum's format
    assert verify_if_catalogued(path).name == "test"

    # Changed in place, with a hash that still starts as the catalogue's: the record catches it,
    # under the catalogued name, under another name, and when the cache is asked for the file again.
    changed = _with_prefix(data, entry.sha256_prefix)
    path.write_bytes(changed)
    moved = tmp_path / "renamed.pth"
    moved.write_bytes(changed)
    for candidate in (path, moved):
        with pytest.raises(ValueError, match=f"does not match the SHA-256 recorded in {record}"):
            verify_if_catalogued(candidate)
    with pytest.raises(ValueError, match="recorded in"):
        download(entry)
    assert main(["verify", str(moved)]) == 2


def test_a_record_that_contradicts_the_catalogue_vouches_for_nothing(tmp_path, published):
    entry, data, digest = published
    forged = _with_prefix(b"forged", "0" if not entry.sha256_prefix.startswith("0") else "1")
    path = tmp_path / "model.pth"
    path.write_bytes(forged)
    (tmp_path / "model.pth.sha256").write_text(f"{hashlib.sha256(forged).hexdigest()}  model.pth\n")
    with pytest.raises(ValueError, match="model.pth.sha256: records .* which the catalogue's .* contradicts"):
        verify_if_catalogued(path)


def test_a_download_that_does_not_match_leaves_no_file_and_no_record(tmp_path, published):
    entry, data, digest = published
    served = tmp_path / "served"
    served.mkdir()
    (served / entry.file_name).write_bytes(data.replace(b"weights", b"backdoor", 1))
    with _loopback_server(served) as base, pytest.raises(ValueError, match="does not match"):
        download(replace(entry, url=f"{base}/{entry.file_name}"))
    assert list((tmp_path / "cache").iterdir()) == []


def test_weights_may_be_a_catalogue_name_downloaded_once_and_naming_its_preset(tmp_path, monkeypatch):
    """--weights NAME / DETECTOR_WEIGHTS=NAME: the catalogued checkpoint is fetched into the cache (here
    from a loopback server), verified, and its entry's preset is the model's."""
    from detector.predictor import Predictor
    from detector.weights.builtin import builtin_weights

    served = tmp_path / "served"
    served.mkdir()
    data = builtin_weights("small_r18_fpn").read_bytes()
    (served / "small-test.safetensors").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    trunk = Entry(name="trunk_test", trunk="resnet18", url="http://127.0.0.1:9/x.pth", file_name="x.pth",
                  sha256_prefix="00", license="test")
    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path / "cache"))
    with _loopback_server(served) as base:
        entry = Entry(name="small_test", preset="small_r18_fpn", url=f"{base}/small-test.safetensors",
                      file_name="small-test.safetensors", sha256_prefix=digest[:8], license="test")
        monkeypatch.setattr(catalogue, "load_catalogue", lambda path=None: {"small_test": entry, "trunk_test": trunk})
        with Predictor.from_preset(None, "small_test", speed="exact") as predictor:
            assert predictor.name == "small_r18_fpn" and predictor.weights_sha256 == digest
            assert predictor.weights_path == tmp_path / "cache" / "small-test.safetensors"
    # Served no more: the cached file is used (and checked) without the network.
    with Predictor.from_preset("small_r18_fpn", "small_test", speed="exact") as predictor:
        assert predictor.weights_path.read_bytes() == data
    with pytest.raises(ValueError, match="small-test.safetensors is the catalogue's checkpoint of small_r18_fpn, "
                                         "not of maskrcnn_r50_fpn"):
        Predictor.from_preset("maskrcnn_r50_fpn", "small_test")
    with pytest.raises(ValueError, match="trunk_test: an ImageNet trunk of the catalogue, not a detection model"):
        Predictor.from_preset(None, "trunk_test")
    with pytest.raises(ValueError, match="no_such_name: weights file not found, nor a catalogue name"):
        Predictor.from_preset(None, "no_such_name")


def test_convert_half_stores_float16_that_loads_into_float32_with_the_files_metadata(tmp_path):
    from safetensors import safe_open

    from detector.weights.loading import save_weights
    from detector.weights.model_metadata import MODEL_KEY, model_config_for, model_metadata

    cfg = replace(get_preset("small_r18_fpn"), input=InputConfig(min_size=288, max_size=384))  # as trained
    model = RCNN(cfg).eval()
    src, dst = tmp_path / "model_final.safetensors", tmp_path / "half.safetensors"
    save_weights(model, src, metadata={MODEL_KEY: model_metadata("small_r18_fpn", cfg)})
    assert main(["convert", str(src), str(dst), "--preset", "small_r18_fpn", "--half"]) == 0
    assert dst.stat().st_size < 0.55 * src.stat().st_size
    with safe_open(str(dst), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} >= {torch.float16}
        assert torch.float32 not in {f.get_tensor(k).dtype for k in f.keys()}
    assert model_config_for(None, dst)[1].input == cfg.input  # the trained input size travels
    loaded = RCNN(cfg).eval()
    load_weights(loaded, dst)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype and torch.equal(b, a.half().to(a.dtype) if a.is_floating_point() else a), name

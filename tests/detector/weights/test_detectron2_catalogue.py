"""Detectron2's zoo in the catalogue: known by the MD5 prefix its file names carry (no SHA-256 published),
then by the full SHA-256 recorded at the first verified download."""

from __future__ import annotations

import hashlib

import pytest

from detector.modeling.presets import get_preset
from detector.weights.catalogue import Entry, claimed_entries, download, load_catalogue, read_record, record_path


def _entry(source, md5_prefix: str) -> Entry:
    return Entry(name="d2_test", preset="d2_maskrcnn_r50_fpn_3x", url=source.as_uri(), file_name=f"model_final_{md5_prefix}.pkl",
                 sha256_prefix="", license="test", md5_prefix=md5_prefix, model_id=1)


def test_zoo_entries_name_their_preset_md5_and_model_id():
    zoo = {name: e for name, e in load_catalogue().items() if (e.preset or "").startswith("d2_")}
    assert len(zoo) == 9
    for e in zoo.values():
        get_preset(e.preset)
        assert e.file_name == f"model_final_{e.md5_prefix}.pkl" and f"/{e.model_id}/" in e.url
        assert e.url.startswith("https://dl.fbaipublicfiles.com/detectron2/COCO-")
    assert zoo["d2_maskrcnn_x101_32x8d_fpn_3x_coco"].coco_val2017 == {"box_ap": 44.3, "mask_ap": 39.5}


def test_download_checks_the_md5_prefix_and_records_the_sha256(tmp_path):
    source = tmp_path / "published.pkl"
    source.write_bytes(b"zoo weights" * 1000)
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    entry = _entry(source, md5[:6])
    path = download(entry, cache)
    assert read_record(record_path(cache, entry)) == hashlib.sha256(source.read_bytes()).hexdigest()
    path.write_bytes(b"changed")  # the recorded SHA-256 (and the MD5) catch it
    with pytest.raises(ValueError, match="model_final_.*MD5 does not start with"):
        download(entry, cache)
    wrong = _entry(source, "000000" if not md5.startswith("000000") else "111111")
    with pytest.raises(ValueError, match="MD5 does not start with"):
        download(wrong, tmp_path / "other")
    assert not list((tmp_path / "other").iterdir())  # nothing partial left


def test_an_entry_without_sha256_prefix_is_claimed_by_its_name_only(tmp_path):
    entry = _entry(tmp_path / "x.pkl", "abcdef")
    catalogue = {entry.name: entry}
    assert claimed_entries(tmp_path / "other.pkl", "0" * 64, catalogue) == []
    assert claimed_entries(tmp_path / "model_final_abcdef.pkl", "0" * 64, catalogue) == [entry]

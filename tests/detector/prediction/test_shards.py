"""detector/prediction/shards.py: each process's record, merging them into --out, what a rerun skips."""

import json
from pathlib import Path

import pytest

from detector.prediction.shards import done_files, merge, part_paths, record_path


def _write(path: Path, *objects, torn: bytes = b"") -> None:
    path.write_bytes(b"".join(json.dumps(o).encode() + b"\n" for o in objects) + torn)


def _ok(name, score=0.5):
    return {"file": name, "width": 4, "height": 3, "detections": [{"score": score}]}


def _bad(name):
    return {"file": name, "error": f"{name}: not a readable image"}


def test_one_process_appends_to_a_jsonl_output_else_to_its_part(tmp_path):
    out = tmp_path / "results.jsonl"
    assert record_path(out, 0, 1) == out
    assert record_path(out, 3, 4) == tmp_path / "results.rank3.jsonl"
    assert record_path(tmp_path / "results.json", 0, 1) == tmp_path / "results.rank0.jsonl"


def test_parts_are_found_by_rank_number_not_by_name(tmp_path):
    out = tmp_path / "r[1].jsonl"  # a name that is a glob pattern too
    for rank in (10, 2, 0):
        (tmp_path / f"r[1].rank{rank}.jsonl").touch()
    (tmp_path / "r[1].rank1.jsonl.tmp").touch()
    (tmp_path / "other.rank1.jsonl").touch()
    assert [p.name for p in part_paths(out)] == ["r[1].rank0.jsonl", "r[1].rank2.jsonl", "r[1].rank10.jsonl"]


def test_merging_keeps_one_line_per_file_a_result_before_a_failure(tmp_path):
    out = tmp_path / "results.jsonl"
    _write(out, _ok("a.jpg"), _bad("b.jpg"), _bad("c.jpg"))  # an earlier merge
    _write(tmp_path / "results.rank0.jsonl", _ok("b.jpg", 0.7), _ok("d.jpg"), torn=b'{"file": "e.j')
    _write(tmp_path / "results.rank1.jsonl", _bad("a.jpg"), _bad("c.jpg"), _ok("f.jpg"))
    merged = merge(out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(lines, key=lambda e: e["file"]) == [_ok("a.jpg"), _ok("b.jpg", 0.7), _bad("c.jpg"), _ok("d.jpg"),
                                                      _ok("f.jpg")]
    assert (merged.images, merged.failed) == (4, 1)
    assert part_paths(out) == []  # results.jsonl holds all the parts held
    assert done_files(out) == {"a.jpg", "b.jpg", "d.jpg", "f.jpg"}


def test_a_json_output_is_one_document_and_its_parts_stay_for_a_rerun(tmp_path):
    out = tmp_path / "results.json"
    _write(tmp_path / "results.rank0.jsonl", _ok("a.jpg"), _bad("b.jpg"))
    _write(tmp_path / "results.rank1.jsonl", _ok("c.jpg"))
    assert merge(out).images == 2
    assert sorted(json.loads(out.read_text()), key=lambda e: e["file"]) == [_ok("a.jpg"), _bad("b.jpg"), _ok("c.jpg")]
    assert len(part_paths(out)) == 2 and done_files(out) == {"a.jpg", "c.jpg"}


def test_coco_lines_merge_into_a_results_list_without_failures(tmp_path):
    out = tmp_path / "results.json"
    result = {"image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9}
    _write(tmp_path / "results.rank0.jsonl", {"file": "a.jpg", "image_id": 7, "results": [result, result]},
           {"file": "b.jpg", "image_id": 8, "results": []}, _bad("c.jpg"))
    merged = merge(out)
    assert (merged.images, merged.failed) == (2, 1)
    assert json.loads(out.read_text()) == [result, result]


def test_records_of_two_formats_and_no_records_are_errors(tmp_path):
    out = tmp_path / "results.json"
    with pytest.raises(ValueError, match="nothing to merge"):
        merge(out)
    _write(tmp_path / "results.rank0.jsonl", {"file": "a.jpg", "image_id": 7, "results": []}, _ok("b.jpg"))
    with pytest.raises(ValueError, match="mix COCO lines and detector lines"):
        merge(out)
    assert not out.exists()

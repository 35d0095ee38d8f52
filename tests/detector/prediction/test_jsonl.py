"""detector/prediction/jsonl.py: a record that a kill leaves readable, and its repair before a resume."""

import json

from detector.prediction.jsonl import LineWriter, entries, open_for_resume, read_record


def _lines(*objects) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


def test_written_lines_read_back_each_one_whole(tmp_path):
    path = tmp_path / "out.jsonl"
    with LineWriter(path) as writer:
        writer.write({"file": "a.jpg", "detections": []})
        assert path.read_bytes() == b'{"file":"a.jpg","detections":[]}\n'  # flushed before the next image
        writer.write({"file": "b.jpg", "error": "b.jpg: not a readable image"})
    assert [entry for _, entry in entries(path)] == [{"file": "a.jpg", "detections": []},
                                                     {"file": "b.jpg", "error": "b.jpg: not a readable image"}]
    record = read_record(path)
    assert (record.ok, record.failed, record.torn) == ({"a.jpg"}, {"b.jpg"}, 0)


def test_a_torn_last_line_is_not_counted_and_is_cut_off_before_appending(tmp_path):
    path = tmp_path / "out.jsonl"
    whole = _lines({"file": "a.jpg", "detections": []}, {"file": "b.jpg", "detections": []})
    path.write_bytes(whole + b'{"file": "c.jpg", "detec')  # what a kill -9 mid-write leaves
    record = read_record(path)
    assert (record.ok, record.torn) == ({"a.jpg", "b.jpg"}, 1)
    writer, kept = open_for_resume(path)
    with writer:
        assert path.read_bytes() == whole  # the earlier lines as they were
        writer.write({"file": "c.jpg", "detections": []})
    assert read_record(path).ok == {"a.jpg", "b.jpg", "c.jpg"} and kept.ok == {"a.jpg", "b.jpg"}


def test_a_torn_line_without_its_end_is_torn_even_when_it_parses(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(_lines({"file": "a.jpg"}) + b'{"file": "b.jpg"}')  # the newline was not written
    assert read_record(path).torn == 1 and read_record(path).ok == {"a.jpg"}


def test_resuming_drops_failures_to_retry_them_and_keeps_results_byte_for_byte(tmp_path):
    path = tmp_path / "out.jsonl"
    a, b = {"file": "a.jpg", "detections": [{"score": 0.5}]}, {"file": "b.jpg", "detections": []}
    path.write_bytes(_lines(a, {"file": "bad.jpg", "error": "unreadable"}, b) + b'{"fi')
    writer, kept = open_for_resume(path)
    writer.close()
    assert path.read_bytes() == _lines(a, b)
    assert (kept.ok, kept.failed) == ({"a.jpg", "b.jpg"}, {"bad.jpg"})
    assert not list(tmp_path.glob(".*.tmp"))  # the rewrite left no temporary file


def test_a_missing_record_is_empty_and_created_on_open(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    assert read_record(path).ok == set()
    writer, _ = open_for_resume(path)
    writer.close()
    assert path.read_bytes() == b""

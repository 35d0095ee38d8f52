"""python -m detector.predict (detector/predict.py): batch jobs end to end. The slow ones start the CLI in
subprocesses (a kill -9 and a resume; torchrun with two gloo processes): ``pytest -m slow`` on this file."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from detector.data.coco_file import load_coco_file
from detector.evaluation.coco_results import load_results
from detector.predict import main
from detector.weights.builtin import builtin_file
from tests.process_state import ROOT, glibc_only, state_after
from tests.tiny_coco import tiny_coco_root

FAST = ["--model", "small_r18_fpn", "--score-threshold", "0", "--masks", "none"]


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
    # The built-in model's sample image: circles and persons above 0.5.
    out = tmp_path / "out.json"
    assert main(["--model", "small_r18_fpn", "--out", str(out), str(builtin_file("sample.png"))]) == 0
    (result,) = json.loads(out.read_text())
    found = {(d["category"], "keypoints" in d) for d in result["detections"]}
    assert {("circle", False), ("person", True)} <= found
    assert all(has_keypoints == (category == "person") for category, has_keypoints in found), found


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


def _images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` small generated images of a few sizes and aspect ratios under ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        h, w = [(60, 80), (80, 60), (64, 64)][i % 3]
        paths.append(folder / f"{i:03d}.png")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _lines(path: Path) -> dict[str, dict]:
    """{file: its line} of a JSON Lines output; a file twice is an error."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    by_file = {line["file"]: line for line in lines}
    assert len(by_file) == len(lines), "a file has two lines"
    return by_file


def _assert_same_results(got: dict[str, dict], expected: dict[str, dict]) -> None:
    """The same files with the same detections, up to float rounding between processes and batches."""
    assert sorted(got) == sorted(expected)
    for name, line in expected.items():
        assert (got[name]["width"], got[name]["height"]) == (line["width"], line["height"])
        assert len(got[name]["detections"]) == len(line["detections"]), name
        for e in line["detections"]:  # near-equal scores may swap places: match each by category and box
            assert any(e["category"] == g["category"] and abs(e["score"] - g["score"]) < 2e-3
                       and np.allclose(e["bbox"], g["bbox"], atol=0.1) for g in got[name]["detections"]), name


def test_a_bad_file_gets_an_error_line_and_the_run_goes_on(tmp_path, capsys):
    photos = tmp_path / "photos"
    good = _images(photos / "trip", 2)
    (photos / "broken.jpg").write_bytes(b"not an image at all")
    (photos / "notes.txt").write_text("not an image file: not looked at")
    out = tmp_path / "out.jsonl"
    assert main([*FAST, "--progress", "--out", str(out), str(photos)]) == 1
    lines = _lines(out)
    assert sorted(lines) == sorted(map(str, [photos / "broken.jpg", *good]))
    assert "broken.jpg: not a readable image" in lines[str(photos / "broken.jpg")]["error"]
    assert all(len(lines[str(p)]["detections"]) > 0 for p in good)
    captured = capsys.readouterr()
    assert "2 images predicted, 0 done before, 1 failed" in captured.out
    assert "error: 1 of 3 files failed" in captured.err
    assert "3/3 [" in captured.err and "img" in captured.err  # the progress bar: count, time left, rate


def test_fail_fast_stops_at_the_first_bad_file(tmp_path, capsys):
    image, = _images(tmp_path, 1)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    out = tmp_path / "out.jsonl"
    assert main([*FAST, "--fail-fast", "--out", str(out), str(broken), str(image)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "broken.jpg: not a readable image" in err[-1]
    assert "error" not in out.read_text()


def test_inputs_that_name_no_image_stop_before_the_model(tmp_path, capsys):
    image, = _images(tmp_path / "photos", 1)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out.jsonl"
    for argument, message in [(tmp_path / "missing", "missing: no such file or folder"),
                              (tmp_path / "empty", "empty: no images in this folder"),
                              (tmp_path / "photos" / "*.jpg", "*.jpg: no file matches this pattern")]:
        assert main(["--out", str(out), str(image), str(argument)]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_json_output_is_one_document_of_every_image(tmp_path):
    images = _images(tmp_path / "photos", 3)
    (tmp_path / "list.txt").write_text("\n".join(map(str, images[1:])) + "\n")
    out = tmp_path / "out.json"
    assert main([*FAST, "--batch-size", "2", "--out", str(out), str(images[0]),
                 "--file-list", str(tmp_path / "list.txt")]) == 0
    document = json.loads(out.read_text())
    assert sorted(entry["file"] for entry in document) == sorted(map(str, images))


def test_a_rerun_skips_what_is_done_and_redoes_a_torn_line_and_failures(tmp_path, capsys):
    images = _images(tmp_path / "photos", 3)
    out = tmp_path / "out.jsonl"
    command = [*FAST, "--out", str(out), str(tmp_path / "photos")]
    assert main(command) == 0
    first = out.read_bytes()
    whole, failed, torn = first.splitlines(keepends=True)
    # As runs leave it: a line whole, a failure (retried), a line cut in the middle by a kill -9.
    failure = json.dumps({"file": json.loads(failed)["file"], "error": "was unreadable for a while"}).encode()
    out.write_bytes(whole + failure + b"\n" + torn[: len(torn) // 2])
    capsys.readouterr()
    assert main(command) == 0
    assert out.read_bytes().startswith(whole)  # the line kept is kept as it was
    _assert_same_results(_lines(out), {json.loads(line)["file"]: json.loads(line) for line in first.splitlines()})
    assert "2 images predicted, 1 done before, 0 failed" in capsys.readouterr().out
    assert main(command) == 0
    assert "0 images predicted, 3 done before" in capsys.readouterr().out


def test_an_earlier_runs_images_in_the_same_out_are_kept_and_named(tmp_path, capsys):
    first, second = _images(tmp_path / "a", 1), _images(tmp_path / "b", 1)
    out = tmp_path / "out.json"
    assert main([*FAST, "--out", str(out), str(tmp_path / "a")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main([*FAST, "--out", str(out), str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert "1 images predicted, 0 done before, 0 failed" in captured.out
    assert (f"already holds results of 1 files that are not among these inputs (an earlier run into --out {out}, "
            f"e.g. {first[0]})") in captured.err
    assert sorted(entry["file"] for entry in json.loads(out.read_text())) == sorted(map(str, first + second))


def test_real_coco_images_with_a_corrupt_one_give_coco_results_for_eval(tmp_path, capsys):
    """The COCO sample's images in a folder beside a truncated JPEG and a non-image file, predicted into
    a COCO results file that detector.eval's loader accepts."""
    tiny = tiny_coco_root()
    ann = tiny / "annotations" / "instances_val2017.json"
    names = sorted(p.name for p in (tiny / "val2017").glob("*.jpg"))[:4]
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in names[:3]:
        shutil.copy(tiny / "val2017" / name, photos / name)
    (photos / names[3]).write_bytes((tiny / "val2017" / names[3]).read_bytes()[:2000])  # cut short
    (photos / "README.txt").write_text("taken in 2017")
    out = tmp_path / "results.json"
    assert main(["--model", "small_r18_fpn", "--score-threshold", "0", "--format", "coco", "--ann", str(ann),
                 "--batch-size", "2", "--out", str(out), str(photos)]) == 1
    assert "3 images predicted, 0 done before, 1 failed" in capsys.readouterr().out
    coco_gt = load_coco_file(ann)
    results = load_results(out, coco_gt)  # every image and category id is the annotation file's
    ids = {img["file_name"]: img["id"] for img in coco_gt.dataset["images"]}
    assert results and {r["image_id"] for r in results} <= {ids[name] for name in names[:3]}
    assert {r["category_id"] for r in results} == {1}  # of the built-in model's classes COCO names only person
    record = _lines(tmp_path / "results.rank0.jsonl")
    assert sorted(record) == sorted(str(photos / name) for name in names)  # README.txt is not an image file
    assert "error" in record[str(photos / names[3])]


def test_coco_format_needs_every_image_in_the_annotations(tmp_path, capsys):
    image, = _images(tmp_path, 1)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "other.png"}], "annotations": [],
                               "categories": [{"id": 1, "name": "person"}]}))
    assert main([*FAST, "--format", "coco", "--ann", str(ann), "--out", str(tmp_path / "r.json"), str(image)]) == 2
    assert f"ann.json has no image named as {image}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--format", "coco", "--out", str(tmp_path / "r.json"), str(image)])  # without --ann
    assert "--format coco needs --ann" in capsys.readouterr().err


def test_merge_puts_the_parts_of_a_job_into_its_output(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    (tmp_path / "results.rank0.jsonl").write_text(json.dumps({"file": "a.jpg", "detections": []}) + "\n")
    (tmp_path / "results.rank1.jsonl").write_text(json.dumps({"file": "b.jpg", "error": "unreadable"}) + "\n")
    assert main(["merge", "--out", str(out)]) == 1  # a file failed
    assert "1 images, 1 failed" in capsys.readouterr().out
    assert sorted(_lines(out)) == ["a.jpg", "b.jpg"]
    assert main(["merge", "--out", str(tmp_path / "other.jsonl")]) == 2
    assert "nothing to merge" in capsys.readouterr().err


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # a subprocess killed with SIGKILL, then two full runs: about 60 s on a loaded 2-core machine
def test_a_run_killed_with_sigkill_resumes_to_the_results_of_an_uninterrupted_one(tmp_path):
    _images(tmp_path / "photos", 24)
    out, reference = tmp_path / "killed.jsonl", tmp_path / "reference.jsonl"
    command = [sys.executable, "-m", "detector.predict", *FAST, "--workers", "1", "--no-progress",
               "--out", str(out), str(tmp_path / "photos")]
    run = subprocess.Popen(command, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while (not out.is_file() or out.read_bytes().count(b"\n") < 3) and time.monotonic() < deadline:
        assert run.poll() is None, run.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    lines_then = out.read_bytes().count(b"\n")
    assert 3 <= lines_then < 24, "the kill came before or after the run"
    with out.open("ab") as f:  # and the line it was writing, cut (the kill itself rarely lands mid-line)
        f.write(b'{"file": "' + str(tmp_path / "photos" / "023.png").encode() + b'", "width": 6')
    done = subprocess.run(command, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{24 - lines_then} images predicted, {lines_then} done before, 0 failed" in done.stdout
    assert main([*FAST, "--out", str(reference), str(tmp_path / "photos")]) == 0
    _assert_same_results(_lines(out), _lines(reference))


@pytest.mark.slow  # torchrun twice, two processes that each load the model: about 60 s on a loaded 2-core machine
def test_torchrun_with_two_gloo_processes_gives_the_one_process_results(tmp_path):
    _images(tmp_path / "photos", 7)
    out, reference = tmp_path / "two.jsonl", tmp_path / "one.jsonl"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "detector.predict", *FAST, "--no-progress", "--out", str(out), str(tmp_path / "photos")]
    done = subprocess.run(command, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 of 2" in done.stderr and "rank 1 of 2" in done.stderr
    assert done.stdout.count("7 images predicted, 0 done before, 0 failed") == 1  # rank 0 sums every rank's
    assert not list(tmp_path.glob("two.rank*.jsonl"))  # merged into two.jsonl
    assert main([*FAST, "--out", str(reference), str(tmp_path / "photos")]) == 0
    _assert_same_results(_lines(out), _lines(reference))
    done = subprocess.run(command, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "0 images predicted, 7 done before" in done.stdout  # resumed per rank

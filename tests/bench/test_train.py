"""bench/train.py at a tiny size: a 4-iteration schedule cut at 2 and 4, scored after each part by
detector.eval; the parts together are the uninterrupted schedule."""

from __future__ import annotations

import json

import pytest

from bench.train import main, scored_file, validation_set
from detector.data.synthetic import ensure_synthetic


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ensure_synthetic(tmp_path_factory.mktemp("synthetic"), train=4, val=2, size=96, seed=0)


def _data(tiny) -> list[str]:
    return ["--train-images", str(tiny.train_images), "--train-ann", str(tiny.train_annotations),
            "--val-images", str(tiny.val_images), "--val-ann", str(tiny.val_annotations)]


@pytest.mark.slow
def test_a_schedule_cut_into_parts_is_scored_after_each(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--out", str(out), "--stops", "2", "4", "--", *_data(tiny), "--iters", "4", "--min-sizes", "64",
            "--max-size", "96", "--log-every", "1", "--seed", "3"]
    assert main(args) == 0
    result = json.loads((out / "recipe.json").read_text())
    assert [row["iteration"] for row in result["rows"]] == [2, 4]
    first, second = result["rows"]
    assert 0 < first["train_minutes"] < second["train_minutes"]
    assert set(first["ap"]) == {"bbox", "segm", "keypoints"}
    # The cut scores the checkpoint, the end the file that ships (which names the size it was trained to).
    assert (first["scored"], second["scored"]) == ("last.pth", "model_final.safetensors")
    assert (out / "eval_2.json").is_file() and (out / "model_final.safetensors").is_file()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iter"] for m in metrics] == [1, 2, 3, 4]  # one schedule, resumed once
    assert result["command"][:3] == ["python", "-m", "detector.train"] and "--stop-at" not in result["command"]
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["iteration", "minutes", "bbox", "segm", "keypoints"]
    assert [line.split()[0] for line in table[1:3]] == ["2", "4"]


def test_the_validation_set_is_the_commands_or_the_synthetic_sets(tiny, tmp_path):
    assert validation_set(_data(tiny)) == (tiny.val_images, tiny.val_annotations)
    with pytest.raises(ValueError, match="needs --val-images and --val-ann"):
        validation_set(_data(tiny)[:4])
    with pytest.raises(ValueError, match="give both"):
        validation_set(["--val-images", "x"])


def test_flags_that_are_the_scripts_own_are_refused(tmp_path):
    for flag in ("--out", "--stop-at", "--resume"):
        with pytest.raises(SystemExit, match="this script's to set"):
            main(["--out", str(tmp_path), "--stops", "2", "--", flag, "x"])
    with pytest.raises(SystemExit, match="must increase"):
        main(["--out", str(tmp_path), "--stops", "4", "2"])


def test_a_stop_scores_the_final_weights_only_where_its_part_wrote_them(tmp_path):
    (tmp_path / "last.pth").write_bytes(b"")
    assert scored_file(tmp_path, part_started=0.0) == tmp_path / "last.pth"
    final = tmp_path / "model_final.safetensors"
    final.write_bytes(b"")
    assert scored_file(tmp_path, part_started=0.0) == final
    assert scored_file(tmp_path, part_started=final.stat().st_mtime + 10) == tmp_path / "last.pth"  # an older run's

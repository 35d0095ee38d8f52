"""bench/gpu_check.py (make gpu-check): its tiny CPU mode runs every step and writes the JSON a GPU run would
(slow: about 3 minutes on 2 shared cores; make test-slow), a step past its time is stopped and recorded, and
the CUDA tests it runs skip without a GPU even under CI=true."""

from __future__ import annotations

import json
import sys
import time

import pytest

from bench.gpu_check import STEPS, junit_counts, main, run


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_tiny_mode_runs_every_step_and_writes_its_json(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")  # the CUDA tests skip, and CI does not turn that skip into a failure
    assert main(["--tiny", "--out-dir", str(tmp_path), "--budget-scale", "3"]) == 0
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["mode"] == "tiny-cpu" and list(summary["steps"]) == list(STEPS)
    assert all(step["status"] == "ok" for step in summary["steps"].values()), summary["steps"]
    assert "flags" in summary["machine"]["cpu"] and summary["machine"]["torch"] and summary["machine"]["torchvision"]
    assert summary["machine"]["python"].count(".") == 2
    tests = summary["steps"]["tests"]
    assert tests["tests"] == tests["skipped"] > 0 and tests["failed"] == 0, tests
    drift = summary["steps"]["drift"]
    assert sum(drift["detections"]) > 0  # the built-in model finds the sample's objects
    assert drift["modes"]["exact"]["matched"] == 1.0 and drift["modes"]["exact"]["max_score_diff"] == 0.0
    assert drift["modes"]["fast"]["matched_1px"] == 1.0

    engine = json.loads((tmp_path / "gpu_engine.json").read_text())
    assert engine["machine"] == summary["machine"]
    assert sorted({(r["batch"], r["impl"]) for r in engine["rows"]}) == [
        (1, "ours-exact"), (1, "ours-fast"), (2, "ours-exact"), (2, "ours-fast")]
    assert all(r["total_s"] > 0 for r in engine["rows"])

    server = json.loads((tmp_path / "gpu_server.json").read_text())
    assert [r["server_args"].split("--max-batch-size ")[1] for r in server["runs"]] == [
        "2", "1", "2 --batch-by-size true --cudnn-benchmark true"]
    assert server["image"] == "synthetic 48x64 JPEG, synthetic 64x48 JPEG"
    for served in server["runs"]:
        assert [row["concurrency"] for row in served["rows"]] == [1, 2]
        assert all(row["ok"] > 0 and not row["errors"] for row in served["rows"]), served["rows"]
    # Batching on: passes of at most 2 (whether two requests meet in one is the machine's timing); off: of 1.
    assert all(1 <= r["mean_batch"] <= 2 and r["forward_passes"] > 0 for r in server["runs"][0]["rows"])
    assert all(r["mean_batch"] == 1 for r in server["runs"][1]["rows"])
    assert all(r["ok"] > 0 for r in server["runs"][2]["rows"])


def test_a_step_past_its_time_is_stopped_and_recorded(tmp_path):
    assert main(["--tiny", "--out-dir", str(tmp_path), "--steps", "tests", "--budget-scale", "0.001"]) == 1
    step = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]["tests"]
    assert step["status"] == "timeout" and step["seconds"] < 30


def test_run_gives_the_output_or_none_past_the_timeout():
    done = run([sys.executable, "-c", "print('hello')"], 30)
    assert done.returncode == 0 and done.stdout == "hello\n"
    assert run([sys.executable, "-c", "import time; time.sleep(30)"], 0.5) is None


def test_junit_counts(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase name="a"/><testcase name="b"><failure message="x"/></testcase>'
        '<testcase name="c"><skipped message="no CUDA device"/></testcase>'
        '<testcase name="d"><skipped message="no CUDA device"/></testcase>'
        "</testsuite></testsuites>")
    assert junit_counts(report) == {"tests": 4, "passed": 1, "failed": 1, "skipped": 2,
                                    "skip_reasons": ["no CUDA device"]}


def test_run_times_out_on_a_command_that_hangs_mid_line():
    """As pytest does after its progress dots: output without a newline, then nothing."""
    hung = "import sys, time; sys.stdout.write('..'); sys.stdout.flush(); time.sleep(30)"
    started = time.monotonic()
    assert run([sys.executable, "-c", hung], 1.0) is None
    assert time.monotonic() - started < 10

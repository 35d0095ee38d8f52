"""docs/pictures.py: the committed sample images are what it makes, pixel for pixel, by the rule its docstring
states; ``--check`` says when a file differs. The model's picture (docs/detections.png) is left out: it
changes with the weights, and the lead regenerates it with them."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
from PIL import Image

import api.routes.page
from api.routes.page import SAMPLES, SAMPLES_DIR
from detector.data.synthetic import make_image
from detector.train import SYNTHETIC
from docs import pictures
from tests.process_state import ROOT
from tests.test_cli_start import _imported, _run


def test_check_reproduces_the_committed_samples():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "pictures.py"), "--check", "--samples-only"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_the_samples_are_the_first_fitting_scenes_of_an_unseen_stream():
    picked = pictures.pick(len(SAMPLES))
    indices = [index for index, _, _ in picked]
    assert indices == sorted(set(indices))
    for index, png, kinds in picked:
        assert "person" in kinds and sum(kind != "person" for kind in kinds) >= pictures.MIN_SHAPES, (index, kinds)
        assert len(png) < pictures.MAX_PNG_BYTES
    skipped = [c for c in itertools.islice(pictures.candidates(), indices[-1] + 1) if c[0] not in indices]
    assert skipped and not any(pictures.fits(png, kinds) for _, png, kinds in skipped)
    # Together they show every kind, and no scene of the training or validation split.
    assert {kind for _, _, kinds in picked for kind in kinds} == {"circle", "square", "triangle", "person"}
    for index, png, _ in picked:
        sample = np.asarray(Image.open(SAMPLES_DIR / SAMPLES[indices.index(index)]))
        for split in (0, 1):  # write_synthetic's train and val streams, at the same index
            seen, _ = make_image(np.random.default_rng([SYNTHETIC["seed"], split, index]), SYNTHETIC["size"])
            assert seen.shape != sample.shape or not np.array_equal(seen, sample)


def test_check_says_which_sample_differs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(api.routes.page, "SAMPLES_DIR", tmp_path)
    assert pictures.main(["--check", "--samples-only"]) == 1  # none written yet
    capsys.readouterr()
    assert pictures.main(["--samples-only"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SAMPLES)
    assert pictures.main(["--check", "--samples-only"]) == 0
    capsys.readouterr()

    changed = tmp_path / SAMPLES[1]
    image = np.asarray(Image.open(changed)).copy()
    image[0, 0] ^= 1  # one pixel, one bit
    Image.fromarray(image).save(changed)
    assert pictures.main(["--check", "--samples-only"]) == 1
    assert capsys.readouterr().err.splitlines() == [f"{changed}: differs from what python docs/pictures.py writes"]



def test_help_and_argument_errors_answer_without_torch():
    """As every command line of the project (tests/test_cli_start.py): parsing first, the model after."""
    out = _run("docs.pictures", ["--help"])
    assert out.returncode == 0 and out.stdout.startswith("usage: python docs/pictures.py"), out.stderr
    assert _imported(out) == []
    out = _run("docs.pictures", ["--no-such-flag"])
    assert out.returncode == 2 and "error:" in out.stderr
    assert _imported(out) == []

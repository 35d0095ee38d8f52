"""Where the real COCO sample is: ``../shared/data/tiny_coco`` beside the repository (100 COCO 2017 images
with instances and person keypoints; for tests only, never copied into the project).

``tiny_coco_root()`` skips the calling test with the reason when the sample is absent, and fails it
instead under ``CI=true``: CI provides the sample, so a missing one there is an error, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_COCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tiny_coco"


def tiny_coco_root() -> Path:
    if not (TINY_COCO / "annotations" / "instances_val2017.json").is_file():
        reason = f"the COCO sample is not at {TINY_COCO} (a shared/ folder beside the repository)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true, so it must be there")
        pytest.skip(reason)
    return TINY_COCO

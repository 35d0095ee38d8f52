"""Where the real COCO sample is: ``../shared/data/tiny_coco`` beside the repository (100 COCO 2017 images
with instances and person keypoints; for tests only, never copied into the project).

``tiny_coco_root()`` skips the calling test with the reason when the sample is absent, and fails it
instead under ``CI=true`` (tests/inputs.py): CI provides the sample, so a missing one there is an error.
"""

from __future__ import annotations

from pathlib import Path

from tests.inputs import missing_input

TINY_COCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tiny_coco"


def tiny_coco_root() -> Path:
    __tracebackhide__ = True  # a skip names the calling test's line
    if not (TINY_COCO / "annotations" / "instances_val2017.json").is_file():
        missing_input(f"the COCO sample is not at {TINY_COCO} (a shared/ folder beside the repository)")
    return TINY_COCO

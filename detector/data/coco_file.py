"""Reading a COCO annotation file into a pycocotools ``COCO`` index: the one loader, for data sets,
training's validation and evaluation alike. Every error is a ValueError that starts with the file's
path and says what is wrong with it (missing, not JSON, not an object, a list or a field missing).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from pycocotools.coco import COCO

SECTIONS = ("images", "annotations", "categories")


def load_coco_file(path: str | Path) -> COCO:
    """The COCO index of an annotation file; a ValueError starting with the path if it is not one."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            dataset = json.load(f)
        return coco_from_dict(dataset)
    except (OSError, ValueError) as e:  # json's and Unicode's errors are ValueErrors
        raise ValueError(f"{path}: {_reason(e)}") from None


def coco_from_dict(dataset: dict) -> COCO:
    """The COCO index of an annotation file's contents (``images``, ``annotations``, ``categories``)."""
    if not isinstance(dataset, dict):
        raise ValueError(f"an annotation file holds a JSON object, not a {type(dataset).__name__}")
    for key in SECTIONS:
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"the annotations have no {key!r} list")
    coco = COCO()
    coco.dataset = dataset
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco.createIndex()
    except (KeyError, TypeError) as e:
        raise ValueError(f"an image, annotation or category lacks a field or is not an object ({e!r})") from None
    return coco


def _reason(e: Exception) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e)

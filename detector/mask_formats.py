"""How ``Predictor.to_json`` writes masks, by name; without torch, so that the command lines and the
service's request schema offer the choice before importing it."""

from __future__ import annotations

# rle: COCO compressed run-length encoding; polygon: outer contours as COCO polygons; none: no masks.
MASK_FORMATS = ("rle", "polygon", "none")
DEFAULT_MASK_FORMAT = "rle"

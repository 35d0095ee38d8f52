"""COCO results files: make them from ``Detections``, read, check and write them.

A COCO result is one detection: {"image_id", "category_id", "score", "bbox": [x, y, w, h],
"segmentation": {"size": [h, w], "counts": str} (compressed RLE), "keypoints": [x1, y1, v1, ...]},
the last three each optional (a results file needs at least one of them per IoU type it is scored on).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from pycocotools.coco import COCO

from detector.structures import Detections

logger = logging.getLogger(__name__)

# The key of a result that each IoU type scores.
RESULT_KEY = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}

# The visibility written for every predicted keypoint: COCO's "labelled" (its OKS ignores it).
PREDICTED_VISIBILITY = 1


def detections_to_coco(
    det: Detections,
    image_id: int,
    label_to_category_id: Mapping[int, int],
    *,
    rles: Sequence[dict] | None = None,
    with_masks: bool = True,
    with_keypoints: bool = True,
) -> list[dict]:
    """The COCO results of one image's detections.

    label_to_category_id: {model label: dataset category id}; a detection whose label it lacks is skipped.
    rles: the detections' masks as COCO RLE dicts, one per detection; when None and ``det`` has
        masks, taken from ``det.rle_masks()``. ``with_masks=False`` leaves segmentations out.
    with_keypoints: write ``det.keypoints`` (K, P, 3) as flat [x, y, 1] triples for the detections
        that have keypoints (``det.has_keypoints``: the model's keypoint classes).
    """
    if with_masks and rles is None and det.mask_probs is not None:
        rles = det.rle_masks()
    if with_masks and rles is not None and len(rles) != len(det):
        raise ValueError(f"{len(rles)} masks for {len(det)} detections of image {image_id}")
    boxes = det.boxes.tolist()  # (K, 4) x1, y1, x2, y2
    scores = det.scores.tolist()
    labels = det.labels.tolist()
    keypoints = det.keypoints.tolist() if with_keypoints and det.keypoints is not None else None  # (K, P, 3)
    has_keypoints = det.has_keypoints.tolist() if keypoints is not None else None  # (K,)

    results = []
    for k, label in enumerate(labels):
        category_id = label_to_category_id.get(int(label))
        if category_id is None:
            continue
        x1, y1, x2, y2 = boxes[k]
        result = {"image_id": int(image_id), "category_id": int(category_id),
                  "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[k])}
        if with_masks and rles is not None:
            result["segmentation"] = _json_rle(rles[k])
        if keypoints is not None and has_keypoints[k]:
            result["keypoints"] = [v for x, y, _ in keypoints[k] for v in (x, y, PREDICTED_VISIBILITY)]
        results.append(result)
    return results


def iou_types_in(results: Sequence[Mapping]) -> list[str]:
    """The IoU types that ``results`` can be scored on, in the order bbox, segm, keypoints."""
    return [t for t, key in RESULT_KEY.items() if any(key in r for r in results)]


def validate_results(results: object, coco_gt: COCO) -> list[dict]:
    """``results`` if it is a list of results whose image and category ids ``coco_gt`` knows, else a ValueError."""
    if not isinstance(results, list):
        raise ValueError(f"a results file holds a JSON list of results, not a {type(results).__name__}")
    image_ids, category_ids = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise ValueError(f"result {i} is not an object: {r!r}")
        for key in ("image_id", "category_id", "score"):
            if key not in r:
                raise ValueError(f"result {i} has no {key!r}")
        if not any(key in r for key in RESULT_KEY.values()):
            raise ValueError(f"result {i} has none of {', '.join(RESULT_KEY.values())}")
        if r["image_id"] not in image_ids:
            raise ValueError(f"result {i}: image id {r['image_id']!r} is not in the annotations")
        if r["category_id"] not in category_ids:
            raise ValueError(f"result {i}: category id {r['category_id']!r} is not in the annotations")
        if "bbox" in r and not _is_numbers(r["bbox"], 4):
            raise ValueError(f"result {i}: bbox {r['bbox']!r} is not [x, y, w, h]")
    return results


def load_results(path: str | Path, coco_gt: COCO) -> list[dict]:
    """The checked results of a COCO results file; a ValueError starting with the path if they are not."""
    path = Path(path)
    try:
        with path.open() as f:
            return validate_results(json.load(f), coco_gt)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def write_results(results: Sequence[Mapping], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        json.dump(list(results), f)
    logger.info("wrote %d results to %s", len(results), path)


def _json_rle(rle: Mapping) -> dict:
    """A compressed RLE with its counts as str (pycocotools gives bytes), fit for JSON."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if not isinstance(counts, str):
        raise ValueError(f"segmentation counts must be compressed RLE (str or bytes), got {type(counts).__name__}")
    return {"size": [int(s) for s in rle["size"]], "counts": counts}


def _is_numbers(value: object, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(isinstance(v, (int, float)) for v in value)

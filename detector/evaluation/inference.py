"""Run a predictor over the images of an annotation file and turn what it finds into COCO results."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from detector.data.images import read_image
from detector.evaluation.coco_results import detections_to_coco
from detector.structures import Detections

logger = logging.getLogger(__name__)


class ImagePredictor(Protocol):
    """What evaluation needs of ``detector.predictor.Predictor``."""

    class_names: list[str]

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]: ...


def predict_coco_results(
    predictor: ImagePredictor,
    image_records: Sequence[Mapping],
    images_dir: str | Path,
    label_to_category_id: Mapping[int, int],
    *,
    batch_size: int = 2,
    with_masks: bool = True,
    with_keypoints: bool = True,
) -> list[dict]:
    """COCO results of ``predictor`` on each image record ({"id", "file_name", ...}) found in ``images_dir``.

    One ``predictor.predict`` call per ``batch_size`` images; with_masks / with_keypoints: whether to
    write segmentations / keypoints when the detections have them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    images_dir = Path(images_dir)
    results: list[dict] = []
    with tqdm(total=len(image_records), desc="inference", unit="img", disable=None) as progress:
        for start in range(0, len(image_records), batch_size):
            batch = image_records[start : start + batch_size]
            images = [_load_record_image(images_dir, record) for record in batch]
            detections = predictor.predict(images)
            if len(detections) != len(images):
                raise ValueError(f"the predictor gave {len(detections)} results for {len(images)} images")
            for record, det in zip(batch, detections, strict=True):
                results += detections_to_coco(det, record["id"], label_to_category_id,
                                              with_masks=with_masks, with_keypoints=with_keypoints)
            progress.update(len(batch))
    return results


def _load_record_image(images_dir: Path, record: Mapping) -> np.ndarray:
    image = read_image(images_dir / record["file_name"])  # upright HWC uint8 RGB; ValueError naming the file
    expected = (record.get("height"), record.get("width"))
    if None not in expected and image.shape[:2] != expected:
        logger.warning("%s is %dx%d (HxW) but the annotations say %dx%d", record["file_name"],
                       *image.shape[:2], *expected)
    return image

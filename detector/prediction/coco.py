"""``--format coco``: each image's detections as COCO results of an annotation file's image and category ids.

An image's id is that of the annotation file's image with the same file name (its last part: COCO's
``file_name`` is a bare name); category ids come from the model's class names, as ``detector.eval`` maps
them (``evaluation/category_map.py``), and the results are made by ``evaluation/coco_results.py``.
A record line is ``{"file", "image_id", "results": [COCO results]}``; the .json document is the list of
every line's results, a results file for ``python -m detector.eval --results``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from detector.evaluation.category_map import label_to_category_id
from detector.evaluation.coco_results import detections_to_coco
from detector.structures import Detections


def image_ids_by_name(images: Sequence[Mapping], ann: str | Path) -> dict[str, int]:
    """{file name: image id} of an annotation file's ``images``; ValueError for a name used twice."""
    ids: dict[str, int] = {}
    for image in images:
        name = Path(image["file_name"]).name
        if name in ids:
            raise ValueError(f"{ann}: two images are named {name} (ids {ids[name]} and {image['id']}): "
                             "--format coco finds an image's id by its file name")
        ids[name] = int(image["id"])
    return ids


def check_all_named(paths: Sequence[Path], ids: Mapping[str, int], ann: str | Path) -> None:
    """ValueError naming the first few of ``paths`` whose file name is not among ``ids``."""
    unknown = [p for p in paths if p.name not in ids]
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise ValueError(f"{ann} has no image named as {', '.join(map(str, unknown[:3]))}{more}")


class CocoEntries:
    """Makes the record line of an image's detections: ``entries(path, det) -> dict``."""

    def __init__(self, image_ids: Mapping[str, int], label_to_category_id: Mapping[int, int], *,
                 with_masks: bool) -> None:
        self.image_ids = image_ids
        self.label_to_category_id = label_to_category_id
        self.with_masks = with_masks

    def __call__(self, path: Path, det: Detections) -> dict:
        image_id = self.image_ids[path.name]
        results = detections_to_coco(det, image_id, self.label_to_category_id, with_masks=self.with_masks)
        return {"file": str(path), "image_id": image_id, "results": results}


def coco_entries(dataset: Mapping, ann: str | Path, class_names: Sequence[str], *, with_masks: bool) -> CocoEntries:
    """The line maker of an annotation file's contents (``images``, ``categories``) for a model's classes."""
    mapping = label_to_category_id(class_names, dataset["categories"])
    if not mapping:
        raise ValueError(f"{ann}: no category is named as a class of the model ({', '.join(class_names[1:6])}, ...)")
    return CocoEntries(image_ids_by_name(dataset["images"], ann), mapping, with_masks=with_masks)

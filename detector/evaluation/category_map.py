"""Map a model's labels to a dataset's category ids, by class name.

A model names its labels with ``class_names[label]``; a COCO annotation file names its
category ids with ``categories[i]["name"]``. The two numberings differ (COCO's ids run
1..90 with gaps, our synthetic presets use contiguous labels), the names do not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

# Names that fill slots of a model's label space without being a class: never matched, never warned about.
# "N/A" fills the gaps of torchvision's 91-slot COCO names.
PLACEHOLDER_NAMES = frozenset({"__background__", "N/A"})


def label_to_category_id(class_names: Sequence[str], categories: Sequence[Mapping]) -> dict[int, int]:
    """{model label: dataset category id} for each model class whose name the dataset has.

    class_names: the model's names, index == label (``class_names[0]`` is the background).
    categories: the annotation file's ``categories`` list of {"id", "name", ...}.
    A model class that the dataset does not name is left out, with one warning for all of them.
    """
    id_by_name = _category_id_by_name(categories)
    mapping: dict[int, int] = {}
    missing: list[str] = []
    for label, name in enumerate(class_names):
        if name in PLACEHOLDER_NAMES:
            continue
        if name in id_by_name:
            mapping[label] = id_by_name[name]
        else:
            missing.append(name)
    if missing:
        logger.warning("model classes not in the dataset's categories, their detections are skipped: %s",
                       ", ".join(missing))
    return mapping


def category_id_to_label(class_names: Sequence[str], categories: Sequence[Mapping]) -> dict[int, int]:
    """The inverse of ``label_to_category_id``: {dataset category id: model label}."""
    return {cat: label for label, cat in label_to_category_id(class_names, categories).items()}


def _category_id_by_name(categories: Sequence[Mapping]) -> dict[str, int]:
    id_by_name: dict[str, int] = {}
    for cat in categories:
        name = cat["name"]
        if name in id_by_name:
            raise ValueError(f"category name {name!r} is used by two category ids: "
                             f"{id_by_name[name]} and {cat['id']}")
        id_by_name[name] = int(cat["id"])
    return id_by_name

"""What a weights file says about its model, so that the file alone rebuilds it.

``detector.train`` and ``python -m detector.weights convert`` store one JSON entry, "model", in the
safetensors metadata::

    {"format": 1, "preset": "maskrcnn_r50_fpn", "class_names": ["__background__", "cat", ...],
     "keypoint_names": [...], "keypoint_classes": [...],   # only for a model with a keypoint head
     "min_size": 160, "max_size": 256,                      # the input sizes it was trained at
     "config": {"backbone": {...}, "mask": {...}, ...}}     # the whole ModelConfig (config_io)

"config" gives the architecture the file was written with, so that the file still loads after its preset
changes (a retrained built-in model with other widths, say); files written before it existed take the
preset's. The classes, keypoints and input sizes replace the architecture's values
(``model_config_for``), so the class layers take the file's shapes. Files written before this entry
existed carry "preset" and "class_names" at the top level: they are read as such. Files without either
(torchvision's, Detectron2's, any .pth) leave the preset to decide, as before.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from detector.modeling.config_io import config_from_dict, config_to_dict
from detector.modeling.preset_names import DEFAULT_PRESET
from detector.modeling.presets import get_preset
from detector.modeling.rcnn import ModelConfig
from detector.weights.loading import read_metadata

log = logging.getLogger(__name__)

MODEL_KEY = "model"  # the safetensors metadata entry
FORMAT_VERSION = 1  # raise it when a field changes meaning; readers refuse a newer one


def model_metadata(preset: str, cfg: ModelConfig) -> dict:
    """The "model" entry for a model of ``preset`` built from ``cfg`` (its classes, input sizes and whole config)."""
    entry = {"format": FORMAT_VERSION, "preset": preset, "class_names": list(cfg.class_names)}
    if cfg.keypoint is not None:
        entry["keypoint_names"] = list(cfg.keypoint_names)
        entry["keypoint_classes"] = list(cfg.keypoint_classes)
    entry["min_size"], entry["max_size"] = cfg.input.min_size, cfg.input.max_size
    entry["config"] = config_to_dict(cfg)
    return entry


def stored_model(path: str | Path) -> dict | None:
    """The "model" entry of weights file ``path`` (a file of the older layout read as one), or None when
    the file does not say what model it holds. ValueError naming the file for an entry this version
    cannot read."""
    metadata = read_metadata(path)
    entry = metadata.get(MODEL_KEY)
    if entry is None:
        if isinstance(metadata.get("preset"), str) and isinstance(metadata.get("class_names"), list):
            return {"format": 0, "preset": metadata["preset"], "class_names": metadata["class_names"]}
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("format"), int):
        raise ValueError(f"{path}: metadata entry {MODEL_KEY!r} is not a model description: {entry!r}")
    if entry["format"] > FORMAT_VERSION:
        raise ValueError(f"{path}: model metadata format {entry['format']} is newer than this detector reads "
                         f"({FORMAT_VERSION}): update detector")
    for key in ("preset", "class_names"):
        if key not in entry:
            raise ValueError(f"{path}: model metadata lacks {key!r}: {entry!r}")
    return entry


def model_config_for(preset: str | None, weights: str | Path | None) -> tuple[str, ModelConfig]:
    """(the preset's name, the model's config) for ``weights`` given ``preset``, either of which may be None.

    A file that names its model decides the classes, keypoints and input sizes; ``preset``, where given,
    must be the file's (ValueError naming both otherwise). A file that does not (or no file) takes
    ``preset``'s config, or the default preset's."""
    entry = stored_model(weights) if weights is not None else None
    if entry is None:
        name = preset or DEFAULT_PRESET
        return name, get_preset(name)
    if preset is not None and preset != entry["preset"]:
        raise ValueError(f"{weights} holds a {entry['preset']} model (its metadata), not the {preset} asked for: "
                         f"ask for {entry['preset']} or leave the preset out")
    return entry["preset"], config_from_entry(entry, source=str(weights))


def config_from_entry(entry: dict, source: str = "model metadata") -> ModelConfig:
    """The entry's architecture ("config"), else its preset's, with the entry's classes, keypoints and input
    sizes; ValueError naming ``source`` for values the architecture cannot take."""
    try:
        cfg = config_from_dict(entry["config"]) if "config" in entry else get_preset(entry["preset"])
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    classes = tuple(entry["class_names"])
    if len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{source}: class_names must be the background and at least one class, got {list(classes)}")
    changes: dict = {"class_names": classes}
    if cfg.keypoint is not None:
        if "keypoint_classes" in entry:
            changes["keypoint_classes"] = tuple(entry["keypoint_classes"])
        elif not set(cfg.keypoint_classes) <= set(classes[1:]):  # an older file: keep those that are classes
            changes["keypoint_classes"] = tuple(c for c in cfg.keypoint_classes if c in classes[1:])
        if "keypoint_names" in entry:
            if len(entry["keypoint_names"]) != len(cfg.keypoint_names):
                raise ValueError(f"{source}: {len(entry['keypoint_names'])} keypoint names, preset "
                                 f"{entry['preset']} has {len(cfg.keypoint_names)}")
            changes["keypoint_names"] = tuple(entry["keypoint_names"])
    elif "keypoint_classes" in entry:
        raise ValueError(f"{source}: keypoint classes {entry['keypoint_classes']} for preset {entry['preset']}, "
                         "which has no keypoint head")
    sizes = {k: entry[k] for k in ("min_size", "max_size") if k in entry}
    for key, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{source}: {key} must be a positive integer, got {value!r}")
    if sizes:
        changes["input"] = replace(cfg.input, **sizes)
    try:
        return replace(cfg, **changes)
    except ValueError as e:  # ModelConfig's own checks (keypoint classes among the classes)
        raise ValueError(f"{source}: {e}") from None

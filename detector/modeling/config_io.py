"""A ``ModelConfig`` as plain JSON values and back, so that a weights file can carry the architecture it
was trained with (``detector.weights.model_metadata``) and still load after its preset changes.

``config_to_dict`` writes every field of every part; ``config_from_dict`` reads them back with the
dataclasses' own types (lists become tuples, ints are accepted where floats are) and refuses anything
else with a ValueError naming the field: a value of the wrong type, or a field this version does not
know (a file written by a newer detector). A field missing from the dict (a file written before the
field existed) takes the dataclass's default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any

from detector.modeling.rcnn import ModelConfig


def config_to_dict(cfg: ModelConfig) -> dict:
    """Every field of ``cfg``, nested parts as dicts, tuples as lists: JSON-serialisable."""
    return _plain(dataclasses.asdict(cfg))


def config_from_dict(data: dict) -> ModelConfig:
    """The ``ModelConfig`` that ``config_to_dict`` wrote; ValueError naming the field for what it cannot be."""
    return _read(ModelConfig, data, "config")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _read(kind: Any, value: Any, where: str) -> Any:
    """``value`` as type ``kind`` (a dataclass, tuple[...], X | None, str, int, float or bool)."""
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object for {kind.__name__}, got {value!r}")
        names = {f.name for f in dataclasses.fields(kind)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"{where}: {kind.__name__} has no field {', '.join(map(repr, unknown))} "
                             "(written by a newer detector?)")
        hints = _hints(kind)
        try:
            return kind(**{name: _read(hints[name], v, f"{where}.{name}") for name, v in value.items()})
        except TypeError as e:  # a field without a default is missing
            raise ValueError(f"{where}: {e}") from None
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # the configs use X | None only
        return _read(inner, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_read(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_read(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in (int, str, bool) and type(value) is kind:
        return value
    raise ValueError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")

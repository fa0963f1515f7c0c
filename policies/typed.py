"""Values against their type annotations: what a config dataclass checks of its fields.

Dataclasses do not check types, and a config read from YAML or JSON can hold anything: a string
where a number belongs, a list where a flag does. :func:`check_field_types` names the first field
whose value is not what its annotation says; the config classes call it first in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any


def describe_type(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(t) for t in typing.get_args(tp))
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        return "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def conforms(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, t) for t in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(conforms(v, t) for v, t in zip(value, args))
        return not args or all(conforms(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return True  # a type the schema does not constrain here


def check_field_types(obj: Any) -> None:
    """ValueError naming the first field of the dataclass instance ``obj`` whose value does not fit its annotation."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not conforms(value, hints[f.name]):
            raise ValueError(f"{f.name} must be {describe_type(hints[f.name])}, got {value!r}")

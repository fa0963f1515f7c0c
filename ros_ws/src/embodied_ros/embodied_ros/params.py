"""Typed node parameters that accept what people type: ``-p rate:=100`` for a float parameter.

rclpy types a parameter by its default and rejects ``100`` (an INTEGER) for a DOUBLE with a
traceback; here every parameter is declared with dynamic typing, then converted to the
default's type, and a value that does not convert is a one-line :class:`ParameterError`.
"""

from __future__ import annotations

from rcl_interfaces.msg import ParameterDescriptor


class ParameterError(ValueError):
    """A parameter value of the wrong type or out of range."""


def _convert(name: str, value, default):
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, (list, tuple)):
            return list(value)
    raise ParameterError(f"parameter {name}:={value!r} should be a {type(default).__name__}")


def declare_parameters(node, defaults: dict[str, tuple[object, str]]) -> dict:
    """Declare ``{name: (default, description)}`` on ``node``; returns the typed values."""
    out = {}
    for name, (default, text) in defaults.items():
        node.declare_parameter(name, default, ParameterDescriptor(description=text, dynamic_typing=True))
        out[name] = _convert(name, node.get_parameter(name).value, default)
    return out

"""Typed protocol parameters: one frozen dataclass per protocol, built from the
parameter dict a user gives (JSON on the command line, a params file).

``Params.from_dict`` refuses unknown keys and values of the wrong type, then
runs the class's :meth:`Params.check`, which lists every bad value with what
to do about it. All of it raises :class:`ParameterError` before any message
is sent.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, ClassVar, Self

from .errors import ParameterError

_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


def _coerce(protocol: str, name: str, kind: str, value: Any) -> Any:
    """``value`` as the field's declared type (``int``, ``float | None``, ...)."""
    options = [k.strip() for k in kind.split("|")]
    if value is None:
        if "None" in options:
            return None
        raise ParameterError(f"{protocol}: parameter '{name}' needs a value ({kind}), got null")
    for option in options:
        target = _SCALARS.get(option)
        if target is bool and isinstance(value, bool):
            return value
        if target is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if target is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if target is float and isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ParameterError(f"{protocol}: parameter '{name}' must be finite, got {value}")
            return float(value)
        if target is str and isinstance(value, str):
            return value
        if target is None and option.startswith(("dict", "list", "Any")):
            return value
    raise ParameterError(f"{protocol}: parameter '{name}' must be {kind}, "
                         f"got {type(value).__name__} {value!r}")


@dataclasses.dataclass(frozen=True)
class Params:
    """Base of every protocol's parameter class."""

    PROTOCOL: ClassVar[str] = "protocol"

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> Self:
        params = dict(params or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise ParameterError(f"{cls.PROTOCOL}: unknown parameter(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(sorted(fields))}")
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in params.items():
            kind = hints[key]
            text = kind if isinstance(kind, str) else _type_name(kind)
            values[key] = _coerce(cls.PROTOCOL, key, text, value)
        obj = cls(**values)
        problems = obj.check()
        if problems:
            raise ParameterError(f"{cls.PROTOCOL}: " + "; ".join(problems))
        return obj

    def check(self) -> list[str]:
        """Every problem with the values, each saying what to do; empty when all is well."""
        return []

    def insecure(self) -> list[str]:
        """What these values switch off that a deployment relies on (simulation modes).
        A party runs them only when its own operator opts in (`confidant party
        --allow-insecure`), and its result then says so."""
        return []

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(kind: Any) -> str:
    """``int | None`` -> "int | None" (typing objects as the text _coerce reads)."""
    args = typing.get_args(kind)
    if args:
        return " | ".join(_type_name(a) for a in args)
    if kind is type(None):
        return "None"
    return getattr(kind, "__name__", str(kind))

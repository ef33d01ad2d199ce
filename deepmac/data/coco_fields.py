"""Typed fields of COCO JSON entries: each check names the file, the entry and the field.

``where`` is ``"FILE: SECTION[INDEX]"`` (``entry_where``), so an error reads
``instances.json: annotations[3] field 'category_id': expected an integer id, found 'person'``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "entry_where",
    "finite_number_field",
    "finite_numbers_field",
    "int_field",
    "object_entry",
    "text_field",
]


def entry_where(source: Any, section: str, index: int) -> str:
    """``"SOURCE: SECTION[INDEX]"``, the prefix of every message of this module."""
    return f"{source}: {section}[{index}]"


def object_entry(entry: Any, where: str) -> dict[str, Any]:
    """``entry`` if it is a JSON object."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, found {type(entry).__name__} {entry!r}")
    return entry


def _field(entry: dict[str, Any], field: str, where: str, expected: str) -> Any:
    if field not in entry:
        raise ValueError(f"{where} has no field {field!r}; expected {expected}")
    return entry[field]


def int_field(entry: dict[str, Any], field: str, where: str, *, minimum: int | None = None) -> int:
    """``entry[field]`` as an int: a JSON integer (or an integral float such as ``3.0``, which
    some exporters write), at least ``minimum``; a bool, string or null is refused."""
    expected = "an integer" if minimum is None else f"an integer >= {minimum}"
    value = _field(entry, field, where, expected)
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral or (minimum is not None and value < minimum):
        raise ValueError(f"{where} field {field!r}: expected {expected}, found {value!r}")
    return int(value)


def text_field(entry: dict[str, Any], field: str, where: str) -> str:
    """``entry[field]``: a non-empty string."""
    value = _field(entry, field, where, "a non-empty string")
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where} field {field!r}: expected a non-empty string, found {value!r}")
    return value


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def finite_number_field(entry: dict[str, Any], field: str, where: str) -> float:
    """``entry[field]``: a finite number."""
    value = _field(entry, field, where, "a finite number")
    if not _is_finite_number(value):
        raise ValueError(f"{where} field {field!r}: expected a finite number, found {value!r}")
    return float(value)


def finite_numbers_field(
    entry: dict[str, Any], field: str, where: str, *, length: int, meaning: str
) -> list[float]:
    """``entry[field]``: a list of ``length`` finite numbers (JSON ``NaN`` / ``Infinity``,
    which Python's json reads, are refused like strings)."""
    expected = f"{meaning} of {length} finite numbers"
    value = _field(entry, field, where, expected)
    if (
        not isinstance(value, list)
        or len(value) != length
        or not all(_is_finite_number(v) for v in value)
    ):
        raise ValueError(f"{where} field {field!r}: expected {expected}, found {value!r}")
    return [float(v) for v in value]

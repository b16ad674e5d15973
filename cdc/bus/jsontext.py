"""JSON text whose numbers keep every digit, and the one rule that makes them plain numbers.

Row images (the capture) and SQS bodies (sync back, the validator) are read with their
fractions as ``Decimal``, so a numeric keeps every digit until something decides its form:
``exact_json`` writes such a value back with each number as it was written (the validator
republishes a Detail, sync back stores a json column), and ``plain_number`` turns one into the
int or double the event contract publishes for a number inside an embedded json document.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

# One decoder and one encoder, reused (json.loads and json.dumps build a new one per call when
# given options).
_DECODER = json.JSONDecoder(parse_float=Decimal)
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


def loads_exact(text: str) -> Any:
    """The JSON value of ``text``, fractions as ``Decimal`` (no digit lost)."""
    return _DECODER.decode(text)


def json_object(text: str) -> dict[str, Any]:
    """A row image as the triggers wrote it (a JSON object), read by ``loads_exact``."""
    value = _DECODER.decode(text)
    if not isinstance(value, dict):
        raise ValueError("row image is not a JSON object")
    return value


def plain_number(value: Decimal) -> int | float:
    """The number a parsed Decimal stands for in the event contract: an int when it is whole
    and was written without an exponent, a double otherwise."""
    if value == value.to_integral_value() and "E" not in str(value):
        return int(value)
    return float(value)


def plain_json(value: Any) -> Any:
    """A parsed JSON value with each Decimal in it made a plain number."""
    if isinstance(value, Decimal):
        return plain_number(value)
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    return value


def orjson_default(value: object) -> Any:
    """orjson's ``default``: a Decimal still in a value is written as its plain number."""
    if isinstance(value, Decimal):
        return plain_number(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def exact_json(value: Any) -> str:
    """Compact JSON text of a parsed value with every number as it was written: ``str`` of a
    parsed Decimal is a valid JSON number ("12.50", "1E+5"). Non-ASCII text is kept as is."""
    out: list[str] = []
    _write(value, out)
    return "".join(out)


def _write(value: Any, out: list[str]) -> None:
    # One frame per level of nesting, appended to one list: no string is copied twice.
    if isinstance(value, Decimal):
        out.append(str(value))
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(_ENCODE(key))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:  # strings, ints, booleans, null
        out.append(_ENCODE(value))

"""Values: one JSON value from Detail -> the Python value the driver binds for its column type.

The converters of ``rows.to_write``, one per mapping column type. Each refuses what
PostgreSQL would refuse, or what could only be stored by guessing (a timestamp without a zone
for a timestamptz column, a string for an int), with ``Refused``, whose message says what is
wrong with the value; the caller adds where it was (the Detail path and the column). Strings
are never interpreted.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from cdc.bus.incoming import describe, text_problem
from cdc.bus.jsontext import exact_json
from sync_back.mapping import ColumnSpec

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# PostgreSQL numeric: up to 131072 digits before the decimal point and 16383 after.
NUMERIC_MAX_INTEGER_DIGITS = 131_072
NUMERIC_MAX_SCALE = 16_383
# A JSON number, also accepted in a string for numeric columns (ASCII digits only: Decimal
# would also take other scripts' digits, underscores and surrounding spaces).
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class Refused(Exception):
    """A value that does not fit its column; the message is the problem, without the place."""


def _expected(kind: str, value: Any, note: str = "") -> Refused:
    return Refused(f"expected {kind}, got {describe(value)}{note}")


def _text(value: Any, spec: ColumnSpec) -> str:
    if not isinstance(value, str):
        raise _expected("text", value)
    problem = text_problem(value)
    if problem:
        raise Refused(problem)
    if spec.max_length is not None and len(value) > spec.max_length:
        raise Refused(f"{len(value)} characters, over the maximum {spec.max_length}")
    return value


def _int(value: Any, spec: ColumnSpec) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _expected("int", value)
    if not INT_MIN <= value <= INT_MAX:
        raise Refused(f"{describe(value)} is out of the range of a 64-bit int")
    return value


def _numeric(value: Any, spec: ColumnSpec) -> Decimal:
    if isinstance(value, bool):
        raise _expected("numeric", value)
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str) and _NUMBER.fullmatch(value):
        try:
            number = Decimal(value)
        except (InvalidOperation, ValueError):
            raise _expected("numeric", value) from None
    else:
        raise _expected("numeric", value)
    if not number.is_finite():  # the parser refuses NaN; a Decimal could still carry one
        raise _expected("numeric", value)
    if not _fits_numeric(number):
        raise Refused(f"{describe(value)} is out of the range of numeric")
    return number


def _fits_numeric(number: Decimal) -> bool:
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int):  # NaN or Infinity
        return False
    return number.adjusted() < NUMERIC_MAX_INTEGER_DIGITS and -exponent <= NUMERIC_MAX_SCALE


def _float(value: Any, spec: ColumnSpec) -> float:
    if not isinstance(value, int | Decimal) or isinstance(value, bool):
        raise _expected("float", value)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise Refused(f"{describe(value)} is out of the range of float")
    return number


def _bool(value: Any, spec: ColumnSpec) -> bool:
    if not isinstance(value, bool):
        raise _expected("bool (true or false)", value)
    return value


def _iso(value: Any, kind: str) -> datetime:
    if not isinstance(value, str):
        raise _expected(f"{kind} (an ISO 8601 string)", value)
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise _expected(f"{kind} (ISO 8601)", value) from None


def _timestamptz(value: Any, spec: ColumnSpec) -> datetime:
    moment = _iso(value, "timestamptz")
    if moment.tzinfo is None:
        raise _expected("timestamptz", value, " (no time zone; write Z or +hh:mm)")
    return moment


def _timestamp(value: Any, spec: ColumnSpec) -> datetime:
    moment = _iso(value, "timestamp")
    if moment.tzinfo is not None:
        # Dropping or converting the zone would be a guess about the legacy column's zone.
        raise _expected("timestamp", value, " (has a time zone; the column has none)")
    return moment


def _date(value: Any, spec: ColumnSpec) -> date:
    if not isinstance(value, str):
        raise _expected("date (an ISO 8601 string)", value)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _expected("date (YYYY-MM-DD)", value) from None


def _uuid(value: Any, spec: ColumnSpec) -> uuid.UUID:
    if not isinstance(value, str):
        raise _expected("uuid (a string)", value)
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _expected("uuid", value) from None


def _json(value: Any, spec: ColumnSpec) -> str:
    # Numbers arrive as Decimal and are written as they came (every digit kept).
    try:
        _check_json(value)
        return exact_json(value)
    except RecursionError:
        raise Refused("nested too deeply to store as json") from None


def _check_json(value: Any) -> None:
    """Refuse, at the first problem in document order, what PostgreSQL would: a string (a key
    too) that text cannot hold, a number out of the range of numeric (jsonb stores numbers as
    numeric)."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise Refused(f"a string in the value {problem}")
    elif isinstance(value, Decimal):
        if not _fits_numeric(value):
            raise Refused(
                f"the number {describe(value)} in the value is out of the range of numeric"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json(key)
            _check_json(item)
    elif isinstance(value, list):
        for item in value:
            _check_json(item)
    elif value is not None and not isinstance(value, int):  # pragma: no cover
        # parse_message yields only JSON types (a bool is an int)
        raise Refused(f"{type(value).__name__} is not a JSON value")


CONVERTERS: dict[str, Callable[[Any, ColumnSpec], Any]] = {
    "text": _text,
    "int": _int,
    "numeric": _numeric,
    "float": _float,
    "bool": _bool,
    "timestamptz": _timestamptz,
    "timestamp": _timestamp,
    "date": _date,
    "uuid": _uuid,
    "json": _json,
}

"""Lossless JSON for column values, by column type.

Row images reach the worker as JSON text written by the capture triggers (PostgreSQL's
``row_to_json(row)``, SQLite's ``json_object``), parsed with their fractions as ``Decimal``
(``cdc.bus.jsontext``) so no digit is lost, or into doubles where every exact numeric column
fits one (``exact_in_doubles``). This module turns each value into the event contract's form:
exact numerics as strings, timestamps with a zone in UTC, bytes as base64, uuid as text, json
embedded, arrays as lists. Conversion is decided once per column from the catalog type, not
per value; which conversion a type gets is the database's (``ValueRules``, one per dialect in
``cdc.capture.dialects``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql

from cdc.bus.jsontext import plain_json

Convert = Callable[[Any], Any]
RowConvert = Callable[[dict[str, Any]], dict[str, Any]]


def _identity(value: Any) -> Any:
    return value


def exact_number(value: Any) -> Any:
    """An exact numeric as the contract carries it: a string with every digit."""
    # numeric/decimal: a string keeps every digit and the scale ("5.00"); NaN arrives as text.
    # format(..., "f"), not str(): str(Decimal("0.00000001")) is "1E-8".
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value) if isinstance(value, int) else value


def _float(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else value


def timestamp_tz(value: Any) -> Any:
    """A moment with a zone as the contract carries it: UTC, six fraction digits, ``Z``."""
    # row_to_json renders timestamptz in the writer's TimeZone setting; publish one form, UTC.
    if value.__class__ is str and value.endswith("+00:00"):
        # Already UTC (the common case, kept cheap): pad the fraction to six digits. A year
        # past 9999 is longer and has no '.' at 19: it takes the general path.
        size = len(value)
        if size == 32 and value[19] == ".":
            return value[:-6] + "Z"
        if size == 25 and value[19] == "+":
            return value[:19] + ".000000Z"
        if size > 25 and value[19] == ".":
            return value[:20] + value[20:-6].ljust(6, "0") + "Z"
    if not isinstance(value, str) or not value[:1].isdigit():
        return value  # 'infinity', '-infinity'
    try:
        moment = datetime.fromisoformat(value).astimezone(UTC)
        return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    except (ValueError, OverflowError):
        return value  # BC dates and other forms Python cannot hold: pass PostgreSQL's text


def _pg_bytea(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    # Hex is the default bytea_output; a writer's session may have chosen 'escape'.
    raw = bytes.fromhex(value[2:]) if value.startswith("\\x") else _unescape_bytea(value)
    return base64.b64encode(raw).decode("ascii")


def _unescape_bytea(text: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and text[i + 1 : i + 2] == "\\":
            out.append(0x5C)
            i += 2
        elif ch == "\\":
            out.append(int(text[i + 1 : i + 4], 8))
            i += 4
        else:
            out.extend(ch.encode())
            i += 1
    return bytes(out)


def _array_of(element: Convert) -> Convert:
    def convert(value: Any) -> Any:
        if isinstance(value, list):
            return [
                convert(v) if isinstance(v, list) else (None if v is None else element(v))
                for v in value
            ]
        return value

    return convert


def _fixed(scale: int) -> Convert:
    # Parsed as a double, which holds every value of numeric(p <= 15, s) exactly: the declared
    # scale gives back PostgreSQL's own text ("12.50"). Decimal input (fallback parse) works too.
    spec = f".{scale}f"

    def convert(value: Any) -> Any:
        return value if isinstance(value, str) else format(value, spec)

    return convert


# A double holds any decimal of up to 15 significant digits exactly (DBL_DIG).
_DOUBLE_DIGITS = 15


def exact_in_doubles(column_types: Mapping[str, sqltypes.TypeEngine[Any]]) -> bool:
    """True when every exact numeric column has a declared precision of at most 15 digits and
    a scale: its values survive a parse into doubles, so the fast JSON parser may be used."""
    for column_type in column_types.values():
        if isinstance(column_type, sqltypes.ARRAY):
            column_type = column_type.item_type
        if isinstance(column_type, sqltypes.Numeric) and not isinstance(
            column_type, sqltypes.Float
        ):
            precision = column_type.precision
            if precision is None or precision > _DOUBLE_DIGITS or column_type.scale is None:
                return False
    return True


def converter(column_type: sqltypes.TypeEngine[Any], numerics_as_doubles: bool = False) -> Convert:
    """The conversion for one column of a database whose columns hold their declared type
    (PostgreSQL's ``row_to_json``), from its reflected SQLAlchemy type."""
    if isinstance(column_type, sqltypes.ARRAY):
        return _array_of(converter(column_type.item_type, numerics_as_doubles))
    if isinstance(column_type, sqltypes.Float):
        return _float
    if isinstance(column_type, sqltypes.Numeric):  # after Float: Float is a Numeric
        if numerics_as_doubles and column_type.scale is not None:
            return _fixed(column_type.scale)
        return exact_number
    if isinstance(column_type, postgresql.MONEY):
        return _identity
    if isinstance(column_type, sqltypes.DateTime) and column_type.timezone:
        return timestamp_tz
    if isinstance(column_type, sqltypes.LargeBinary | postgresql.BYTEA):
        return _pg_bytea
    if isinstance(column_type, sqltypes.JSON | postgresql.JSON | postgresql.JSONB):
        return plain_json
    if isinstance(column_type, sqltypes.Integer | sqltypes.String | sqltypes.Boolean):
        return _identity
    return plain_json  # anything else (composites, domains of numbers): no Decimal may leak


class ValueRules(Protocol):
    """How a database's row images carry values, per column type: one per dialect
    (``cdc.capture.dialects``)."""

    def converter(
        self, column_type: sqltypes.TypeEngine[Any], numerics_as_doubles: bool
    ) -> Convert: ...

    def unknown_value(self, value: Any) -> Any:
        """A value of a column the catalog does not know (added since it was read)."""


def row_converters(
    column_types: Mapping[str, sqltypes.TypeEngine[Any]],
    rules: ValueRules,
    numerics_as_doubles: bool = False,
) -> tuple[RowConvert, RowConvert]:
    """Two functions converting a parsed row image in place: the first also handles columns
    the catalog does not know (added since it was read); the second is for images the caller
    has checked to hold only known columns. Only columns that need work cost anything, which
    matters at tens of thousands of rows a second."""
    work = tuple(
        (name, conv)
        for name, t in column_types.items()
        if (conv := rules.converter(t, numerics_as_doubles)) is not _identity
    )
    known = column_types.keys()
    fallback = rules.unknown_value

    def convert_known(row: dict[str, Any]) -> dict[str, Any]:
        for name, conv in work:
            value = row.get(name)
            if value is not None:
                row[name] = conv(value)
        return row

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        if not row.keys() <= known:
            # A column added since the catalog was read: safe generic conversion.
            for name in row.keys() - known:
                if row[name] is not None:
                    row[name] = fallback(row[name])
        return convert_known(row)

    return convert, convert_known

"""Column values of the ``logical`` mode: PostgreSQL's text output form to the event contract.

pgoutput sends each value as its type's output function writes it (``'t'``, ``'2026-11-28
18:45:52.5+01'``, ``'{1,NULL}'``). The trigger mode publishes what ``row_to_json`` writes after
``cdc.capture.values`` converts it; this module yields the same JSON value from the text form, so a
consumer cannot tell the two modes apart. The conversion is chosen once per relation column by
type OID (``text_converter``); each call then costs one small function.

It assumes the replication session's defaults, as the writers' sessions have them: DateStyle
ISO, IntervalStyle postgres, bytea_output hex (escape is also read), the same lc_monetary for
money. TimeZone does not matter: timestamptz is published in UTC.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from cdc.bus.jsontext import loads_exact, plain_json

TextConvert = Callable[[str], Any]

# The text as sent. ``str`` returns a str argument itself, and costs less to call than a
# function of our own: this is the conversion of most columns.
_as_text: TextConvert = str


def _bool(value: str) -> bool:
    return value == "t"


# float4out/float8out write these words; row_to_json keeps them as strings (not JSON numbers),
# while Python's float() would accept them and give nan/inf.
_FLOAT_WORDS: Final = frozenset({"NaN", "Infinity", "-Infinity"})


def _float(value: str) -> float | str:
    return value if value in _FLOAT_WORDS else float(value)


def _json(value: str) -> Any:
    return plain_json(loads_exact(value))


# Escape-format bytea (bytea_output = 'escape'): '\\' is a backslash, '\ooo' an octal byte.
_BYTEA_ESCAPE = re.compile(rb"\\(\\|[0-7]{3})")


def _bytea_byte(match: re.Match[bytes]) -> bytes:
    code = match[1]
    return b"\\" if code == b"\\" else bytes((int(code, 8),))


def _bytea(value: str) -> str:
    if value.startswith("\\x"):
        raw = bytes.fromhex(value[2:])
    else:
        raw = _BYTEA_ESCAPE.sub(_bytea_byte, value.encode())
    return base64.b64encode(raw).decode("ascii")


def _timestamp(value: str) -> str:
    # row_to_json writes the ISO form with a 'T' and leaves the rest (fraction, ' BC') as is.
    return value.replace(" ", "T", 1)


# The zone of timestamptz text: '+01' in DateStyle ISO, '+01:00' in row_to_json's form.
_HOURS_ONLY_ZONE = re.compile(r"([+-]\d\d)((?: BC)?)$")


def _timestamp_tz(value: str) -> str:
    # Exactly cdc.capture.values._timestamp_tz applied to row_to_json's form, so both modes agree
    # (always six digits of fraction: '...T17:45:52.000000Z').
    if not value[:1].isdigit():
        return value  # 'infinity', '-infinity'
    if value.endswith("+00") and len(value) >= 22 and value[10] == " ":
        # UTC already (the replication session's TimeZone): only the form changes.
        if len(value) == 22:
            return f"{value[:10]}T{value[11:19]}.000000Z"
        if value[19] == ".":
            return f"{value[:10]}T{value[11:20]}{value[20:-3].ljust(6, '0')}Z"
    try:
        moment = datetime.fromisoformat(value)  # Python 3.11 reads '2026-11-28 18:45:52.5+01'
        return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    except (ValueError, OverflowError):
        # BC, past year 9999, or out of range once in UTC: PostgreSQL's text in row_to_json's
        # form, as the trigger mode passes it.
        return _HOURS_ONLY_ZONE.sub(r"\1:00\2", value.replace(" ", "T", 1))


# One array token: a quoted element, a brace or comma, or an unquoted element.
_ARRAY_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|([{},])|([^{},"]+)|(.)', re.DOTALL)
_BACKSLASH_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def _unescape(element: str) -> str:
    return _BACKSLASH_ESCAPE.sub(r"\1", element) if "\\" in element else element


def array_of(element: TextConvert) -> TextConvert:
    """The conversion of an array whose elements convert with ``element``; nested lists for
    multi-dimensional arrays, None for NULL elements. Public so the shell can also build it for
    arrays of types resolved from the catalog (enum[], domain[])."""

    def convert(value: str) -> list[Any]:
        if value[:1] == "[":
            # '[0:1]={1,2}': array_out adds bounds when a lower bound is not 1; JSON has none.
            value = value[value.index("=") + 1 :]
        if value.rfind("{") == 0 and value.find("}") == len(value) - 1 and '"' not in value:
            # One dimension, nothing quoted: the common case, with no tokenizing.
            body = value[1:-1]
            if not body:
                return []
            # array_out writes NULL in capitals and quotes any element spelling null otherwise.
            return [None if item == "NULL" else element(item) for item in body.split(",")]
        return _parse_array(value, element)

    return convert


def _parse_array(text: str, element: TextConvert) -> list[Any]:
    root: list[Any] | None = None
    stack: list[list[Any]] = []
    for match in _ARRAY_TOKEN.finditer(text):
        quoted, punctuation, bare, stray = match.groups()
        if punctuation == ",":
            continue
        if punctuation == "{":
            level: list[Any] = []
            if stack:
                stack[-1].append(level)
            elif root is not None:
                raise ValueError(f"malformed array text {text!r}: more than one outer brace")
            else:
                root = level
            stack.append(level)
        elif punctuation == "}":
            if not stack:
                raise ValueError(f"malformed array text {text!r}: unbalanced '}}'")
            stack.pop()
        elif not stack:
            raise ValueError(f"malformed array text {text!r}: element outside braces")
        elif quoted is not None:
            stack[-1].append(element(_unescape(quoted)))
        elif bare is not None:
            bare = bare.strip()
            if bare:  # whitespace between tokens is allowed in the input syntax
                stack[-1].append(None if bare.upper() == "NULL" else element(_unescape(bare)))
        else:
            raise ValueError(f"malformed array text {text!r}: unexpected {stray!r}")
    if root is None or stack:
        raise ValueError(f"malformed array text {text!r}: unbalanced braces")
    return root


_SCALARS: Final[dict[int, TextConvert]] = {
    16: _bool,  # bool
    17: _bytea,  # bytea
    20: int,  # int8
    21: int,  # int2
    23: int,  # int4
    26: str,  # oid: row_to_json quotes it ("26"); both capture modes publish the same form
    114: _json,  # json
    700: _float,  # float4
    701: _float,  # float8
    1114: _timestamp,  # timestamp
    1184: _timestamp_tz,  # timestamptz
    3802: _json,  # jsonb
    # Strings as sent (numeric keeps every digit and its scale; 'NaN', 'Infinity' are text too):
    # numeric, char, name, text, xml, cidr, macaddr8, money, macaddr, inet, bpchar, varchar,
    # date, time, interval, timetz, uuid.
    **dict.fromkeys(
        (1700, 18, 19, 25, 142, 650, 774, 790, 829, 869, 1042, 1043, 1082, 1083, 1186, 1266, 2950),
        _as_text,
    ),
}

# Array type OID -> element type OID (pg_type.typarray of each scalar above).
_ARRAYS: Final = {
    1000: 16,
    1001: 17,
    1016: 20,
    1005: 21,
    1007: 23,
    1028: 26,
    199: 114,
    1021: 700,
    1022: 701,
    1115: 1114,
    1185: 1184,
    3807: 3802,
    1231: 1700,
    1002: 18,
    1003: 19,
    1009: 25,
    143: 142,
    651: 650,
    775: 774,
    791: 790,
    1040: 829,
    1041: 869,
    1014: 1042,
    1015: 1043,
    1182: 1082,
    1183: 1083,
    1187: 1186,
    1270: 1266,
    2951: 2950,
}


def text_converter(type_oid: int, type_modifier: int = -1) -> TextConvert:
    """The conversion of one column's text values, chosen once from its pgoutput Relation entry.

    An OID not built in (enum, domain, composite, extension types) gets the text unchanged;
    ``type_modifier`` is accepted for the caller's convenience and changes nothing today.
    """
    element_oid = _ARRAYS.get(type_oid)
    if element_oid is not None:
        return array_of(_SCALARS[element_oid])
    return _SCALARS.get(type_oid, _as_text)

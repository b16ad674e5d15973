from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql

from cdc.capture.pgtypes import array_of, text_converter
from cdc.capture.values import converter


def convert(type_oid: int, text: str) -> Any:
    return text_converter(type_oid)(text)


# --- scalars ----------------------------------------------------------------------------------


def test_bool() -> None:
    assert convert(16, "t") is True
    assert convert(16, "f") is False


@pytest.mark.parametrize("oid", [20, 21, 23])
def test_integers(oid: int) -> None:
    assert convert(oid, "-42") == -42
    assert convert(20, "9223372036854775807") == 9223372036854775807


def test_oid_is_text_as_row_to_json_writes_it() -> None:
    assert convert(26, "26") == "26"


def test_numeric_is_the_text_as_sent() -> None:
    for text in ["12.50", "NaN", "Infinity", "-0.00000001", "123456789012345678901234567890.1"]:
        assert convert(1700, text) == text


@pytest.mark.parametrize("oid", [700, 701])
def test_floats_and_their_special_words(oid: int) -> None:
    assert convert(oid, "1.5") == 1.5
    assert convert(oid, "1e+300") == 1e300
    assert convert(oid, "-0") == 0.0
    for word in ["NaN", "Infinity", "-Infinity"]:
        assert convert(oid, word) == word  # row_to_json writes these as strings


@pytest.mark.parametrize(
    ("oid", "text"),
    [
        (25, 'héllo, "w"'),
        (1043, "x"),
        (1042, "a  "),
        (19, "pg_class"),
        (2950, "54151372-be0c-4199-bd11-db1f4784d488"),
        (869, "10.0.0.1/8"),
        (650, "10.0.0.0/8"),
        (829, "08:00:2b:01:02:03"),
        (1186, "1 year 2 days 03:00:00.5"),
        (1083, "10:00:01.5"),
        (1266, "10:00:00+02"),
        (790, "$12.50"),
        (142, "<a/>"),
        (1082, "2026-02-03"),
        (1082, "0044-03-15 BC"),
        (1082, "infinity"),
        (16385, "happy"),
        (999999, "{not an array}"),
    ],
)
def test_text_like_and_unknown_types_are_unchanged(oid: int, text: str) -> None:
    assert convert(oid, text) == text


@pytest.mark.parametrize("oid", [114, 3802])
def test_json_is_embedded_with_plain_numbers(oid: int) -> None:
    text = '{"a": [1, 2.5, 1.0, 12345678901234567890], "b": null, "c": "é"}'
    assert convert(oid, text) == {"a": [1, 2.5, 1, 12345678901234567890], "b": None, "c": "é"}
    assert convert(oid, "3") == 3


def test_bytea_hex_and_escape_forms_become_base64() -> None:
    assert convert(17, "\\x0102ff") == "AQL/"
    assert convert(17, "\\x") == ""
    # bytea_output = 'escape': a doubled backslash is one byte, \ooo an octal byte.
    assert convert(17, "ab\\\\c\\001\\377") == "YWJcYwH/"


def test_timestamp_takes_row_to_json_form_without_a_zone() -> None:
    assert convert(1114, "2026-01-01 10:00:00.5") == "2026-01-01T10:00:00.5"
    assert convert(1114, "2026-01-01 10:00:00") == "2026-01-01T10:00:00"
    assert convert(1114, "0044-03-15 10:00:00 BC") == "0044-03-15T10:00:00 BC"
    assert convert(1114, "infinity") == "infinity"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28 18:45:52.5+01", "2026-11-28T17:45:52.500000Z"),
        ("2026-11-28 18:45:52.123456-03:30", "2026-11-28T22:15:52.123456Z"),
        # cdc.values prints no fraction when it is zero (datetime.isoformat): the same here.
        ("2026-11-28 18:45:52+01", "2026-11-28T17:45:52.000000Z"),
        ("1850-01-01 00:09:21+00:09:21", "1850-01-01T00:00:00.000000Z"),  # local mean time offsets
        ("infinity", "infinity"),
        ("-infinity", "-infinity"),
        # Beyond what Python holds: PostgreSQL's text in row_to_json's form.
        ("0044-03-15 10:00:00+01 BC", "0044-03-15T10:00:00+01:00 BC"),
        ("12026-01-01 01:00:00+01", "12026-01-01T01:00:00+01:00"),
        ("0001-01-01 00:30:00+01", "0001-01-01T00:30:00+01:00"),  # year 0 in UTC
    ],
)
def test_timestamptz_in_utc(text: str, expected: str) -> None:
    assert convert(1184, text) == expected


# --- arrays -----------------------------------------------------------------------------------


def test_empty_array() -> None:
    assert convert(1007, "{}") == []
    assert convert(1009, "{}") == []


def test_nulls_quotes_and_escapes_in_a_text_array() -> None:
    text = r'{NULL,"NULL","a,b","q\"uote","back\\slash",""," sp ","{x}",null}'
    assert convert(1009, text) == [
        None,
        "NULL",
        "a,b",
        'q"uote',
        "back\\slash",
        "",
        " sp ",
        "{x}",
        None,
    ]


def test_multi_dimensional_arrays_nest() -> None:
    assert convert(1007, "{{1,2},{3,4}}") == [[1, 2], [3, 4]]
    assert convert(1016, "{{{1}},{{NULL}}}") == [[[1]], [[None]]]
    assert convert(1015, '{{a,"b c"},{"",NULL}}') == [["a", "b c"], ["", None]]


def test_dimension_decoration_is_dropped() -> None:
    assert convert(1007, "[0:1]={1,2}") == [1, 2]
    assert convert(1015, "[2:3][0:0]={{a},{b}}") == [["a"], ["b"]]


def test_elements_convert_with_the_element_type() -> None:
    assert convert(1185, '{"2026-01-01 10:00:00+01",NULL,infinity}') == [
        "2026-01-01T09:00:00.000000Z",
        None,
        "infinity",
    ]
    assert convert(1115, '{"2026-01-01 10:00:00.25"}') == ["2026-01-01T10:00:00.25"]
    assert convert(1231, "{1.50,NaN}") == ["1.50", "NaN"]
    assert convert(1022, "{NaN,1.5,-Infinity}") == ["NaN", 1.5, "-Infinity"]
    assert convert(1000, "{t,f,NULL}") == [True, False, None]
    assert convert(1182, "{2026-01-01}") == ["2026-01-01"]
    assert convert(2951, "{54151372-be0c-4199-bd11-db1f4784d488}") == [
        "54151372-be0c-4199-bd11-db1f4784d488",
    ]
    assert convert(1005, "{-1,2}") == [-1, 2]
    assert convert(1028, "{26}") == ["26"]


def test_bytea_array() -> None:
    assert convert(1001, r'{"\\x0102ff",NULL,"\\x"}') == ["AQL/", None, ""]


def test_json_arrays() -> None:
    assert convert(3807, r'{"{\"a\": 1.0}",NULL}') == [{"a": 1}, None]
    assert convert(199, r'{"[1, 2.50]","\"s\""}') == [[1, 2.5], "s"]


def test_array_of_a_type_resolved_by_the_caller() -> None:
    # An enum[] (OID not built in) is text unless the shell builds its conversion.
    assert convert(16386, "{happy,sad}") == "{happy,sad}"
    assert array_of(str.upper)("{happy,sad}") == ["HAPPY", "SAD"]


@pytest.mark.parametrize("text", ["{1,2", "{1}}", "1,2", "{1}{2}", '{"open}'])
def test_malformed_array_text(text: str) -> None:
    with pytest.raises(ValueError, match="malformed array"):
        convert(1007, text)


# --- the same JSON value as the trigger mode --------------------------------------------------

# Read once from PostgreSQL 15 (TimeZone Europe/Paris): each value's text output, as pgoutput
# sends it, and the value in row_to_json, as the trigger mode stores it.
SAME_AS_TRIGGER_MODE: list[tuple[int, str, str]] = [
    (16, "t", "true"),
    (16, "f", "false"),
    (17, "\\x0102ff", '"\\\\x0102ff"'),
    (20, "9223372036854775807", "9223372036854775807"),
    (21, "-5", "-5"),
    (114, '{"a": [1, 2.5, 1.0], "b": null}', '{"a": [1, 2.5, 1.0], "b": null}'),
    (3802, '{"a": {"c": "é"}, "b": 1}', '{"a": {"c": "é"}, "b": 1}'),
    (700, "1.5", "1.5"),
    (700, "NaN", '"NaN"'),
    (701, "-Infinity", '"-Infinity"'),
    (701, "0.1", "0.1"),
    (701, "1e+300", "1e+300"),
    (700, "3.4028235e+38", "3.4028235e+38"),
    (1700, "12.50", "12.50"),
    (1700, "NaN", '"NaN"'),
    (1700, "Infinity", '"Infinity"'),
    (1700, "123456789012345678901234567890.000001", "123456789012345678901234567890.000001"),
    (1114, "2026-01-01 10:00:00.5", '"2026-01-01T10:00:00.5"'),
    (1114, "infinity", '"infinity"'),
    (1114, "0044-03-15 10:00:00 BC", '"0044-03-15T10:00:00 BC"'),
    (1184, "2026-11-28 18:45:52.5+01", '"2026-11-28T18:45:52.5+01:00"'),
    (1184, "2026-11-28 18:45:52+01", '"2026-11-28T18:45:52+01:00"'),
    (1184, "1850-01-01 00:09:21+00:09:21", '"1850-01-01T00:09:21+00:09:21"'),
    (1184, "-infinity", '"-infinity"'),
    (1184, "0044-03-15 10:09:21+00:09:21 BC", '"0044-03-15T10:09:21+00:09:21 BC"'),
    (1184, "12026-01-01 01:00:00+01", '"12026-01-01T01:00:00+01:00"'),
    (25, 'héllo, "w"', '"héllo, \\"w\\""'),
    (1042, "a  ", '"a  "'),
    (1082, "0044-03-15 BC", '"0044-03-15 BC"'),
    (1083, "10:00:01.5", '"10:00:01.5"'),
    (1266, "10:00:00+02", '"10:00:00+02"'),
    (1186, "1 year 2 days 03:00:00.5", '"1 year 2 days 03:00:00.5"'),
    (2950, "54151372-be0c-4199-bd11-db1f4784d488", '"54151372-be0c-4199-bd11-db1f4784d488"'),
    (790, "$12.50", '"$12.50"'),
    (1007, "{}", "[]"),
    (1007, "{1,NULL,3}", "[1,null,3]"),
    (1007, "{{1,2},{3,4}}", "[[1,2],[3,4]]"),
    (1007, "[0:1]={1,2}", "[1,2]"),
    (
        1009,
        '{NULL,"NULL","a,b","q\\"uote","back\\\\slash",""," sp ","{x}"}',
        '[null,"NULL","a,b","q\\"uote","back\\\\slash",""," sp ","{x}"]',
    ),
    (1231, "{1.50,NaN}", '[1.50,"NaN"]'),
    (1022, "{NaN,1.5,Infinity}", '["NaN",1.5,"Infinity"]'),
    (
        1185,
        '{"2026-01-01 10:00:00+01","2026-01-01 05:30:00.25+01",infinity}',
        '["2026-01-01T10:00:00+01:00","2026-01-01T05:30:00.25+01:00","infinity"]',
    ),
    (1115, '{"2026-01-01 10:00:00.25"}', '["2026-01-01T10:00:00.25"]'),
    (1001, '{"\\\\x01ff",NULL,"\\\\x"}', '["\\\\x01ff",null,"\\\\x"]'),
    (3807, '{"{\\"a\\": 1.0}",NULL}', '[{"a": 1.0},null]'),
    (199, '{"[1, 2.50]"}', "[[1, 2.50]]"),
    (1000, "{t,f,NULL}", "[true,false,null]"),
    (1182, "{2026-01-01}", '["2026-01-01"]'),
    (1015, "[2:3][0:0]={{a},{b}}", '[["a"],["b"]]'),
    (1016, "{{{1}}}", "[[[1]]]"),
]

# The reflected SQLAlchemy type the trigger mode would convert each of these with.
_SCALAR_TYPES: dict[int, sqltypes.TypeEngine[Any]] = {
    16: sqltypes.BOOLEAN(),
    17: postgresql.BYTEA(),
    20: sqltypes.BIGINT(),
    21: sqltypes.SMALLINT(),
    23: sqltypes.INTEGER(),
    25: sqltypes.TEXT(),
    114: postgresql.JSON(),
    700: sqltypes.REAL(),
    701: sqltypes.DOUBLE_PRECISION(),
    790: postgresql.MONEY(),
    1042: sqltypes.CHAR(),
    1043: sqltypes.VARCHAR(),
    1082: sqltypes.DATE(),
    1083: sqltypes.TIME(),
    1114: sqltypes.TIMESTAMP(),
    1184: sqltypes.TIMESTAMP(timezone=True),
    1186: postgresql.INTERVAL(),
    1266: sqltypes.TIME(timezone=True),
    1700: sqltypes.NUMERIC(),
    2950: postgresql.UUID(),
    3802: postgresql.JSONB(),
}
_ARRAY_ELEMENTS = {
    1000: 16,
    1001: 17,
    1007: 23,
    1009: 25,
    1015: 1043,
    1016: 20,
    1022: 701,
    1115: 1114,
    1182: 1082,
    1185: 1184,
    1231: 1700,
    3807: 3802,
    199: 114,
}


def _trigger_mode_type(oid: int) -> sqltypes.TypeEngine[Any]:
    if oid in _ARRAY_ELEMENTS:
        return postgresql.ARRAY(_SCALAR_TYPES[_ARRAY_ELEMENTS[oid]])
    return _SCALAR_TYPES[oid]


@pytest.mark.parametrize(("oid", "text", "row_to_json"), SAME_AS_TRIGGER_MODE)
def test_same_json_value_as_the_trigger_mode(oid: int, text: str, row_to_json: str) -> None:
    trigger_value = converter(_trigger_mode_type(oid))(json.loads(row_to_json, parse_float=Decimal))
    logical_value = convert(oid, text)
    # Compared as published (JSON text), so True vs 1 or "1" vs 1 cannot pass unnoticed.
    assert json.dumps(logical_value) == json.dumps(trigger_value)


def test_utc_timestamptz_fast_path_matches_the_general_one() -> None:
    for text, expected in [
        ("2026-11-28 17:45:52.5+00", "2026-11-28T17:45:52.500000Z"),
        ("2026-11-28 17:45:52+00", "2026-11-28T17:45:52.000000Z"),
        ("2026-11-28 17:45:52.123456+00", "2026-11-28T17:45:52.123456Z"),
    ]:
        assert convert(1184, text) == expected
        assert convert(1184, text.replace("+00", "+01")) != expected  # the general path ran

from __future__ import annotations

import json
from decimal import Decimal

from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql

from cdc.bus.jsontext import json_object
from cdc.capture.dialects import capture_of
from cdc.capture.values import row_converters
from cdc.core.dialects import POSTGRESQL, SQLITE

PG_COLUMNS = {
    "id": sqltypes.INTEGER(),
    "price": sqltypes.NUMERIC(10, 2),
    "ratio": sqltypes.DOUBLE_PRECISION(),
    "at": sqltypes.TIMESTAMP(timezone=True),
    "naive": sqltypes.TIMESTAMP(),
    "raw": postgresql.BYTEA(),
    "doc": postgresql.JSONB(),
    "tags": postgresql.ARRAY(sqltypes.NUMERIC()),
    "u": postgresql.UUID(),
    "name": sqltypes.TEXT(),
}


def convert_pg(image: str) -> dict:
    parsed = json_object(image)
    assert parsed is not None
    return row_converters(PG_COLUMNS, capture_of(POSTGRESQL))[0](parsed)


def test_postgres_images_become_the_contract_forms() -> None:
    # As row_to_json writes them, with a writer whose TimeZone is Europe/Paris
    image = (
        json.dumps(
            {
                "id": 1,
                "price": 0,
                "ratio": 0.25,
                "at": "2026-11-28T18:45:52.5+01:00",
                "naive": "2026-01-01T10:00:00",
                "raw": "\\x0102ff",
                "doc": {"a": [1, 2.5]},
                "tags": [1.10, None, 3],
                "u": "54151372-be0c-4199-bd11-db1f4784d488",
                "name": "é",
            }
        )
        .replace('"price": 0', '"price": 12345678901234567890.10')
        .replace("1.1,", "1.10,")
    )
    out = convert_pg(image)
    assert out["price"] == "12345678901234567890.10"  # every digit, the scale kept
    assert out["ratio"] == 0.25
    assert out["at"] == "2026-11-28T17:45:52.500000Z"
    assert out["naive"] == "2026-01-01T10:00:00"  # no zone invented
    assert out["raw"] == "AQL/"
    assert out["doc"] == {"a": [1, 2.5]}
    assert out["tags"] == ["1.10", None, "3"]
    assert out["u"] == "54151372-be0c-4199-bd11-db1f4784d488"
    assert out["name"] == "é"
    assert json.loads(json.dumps(out)) == out


def test_nulls_special_values_and_escape_bytea() -> None:
    out = convert_pg(
        json.dumps(
            {
                "price": "NaN",
                "at": "infinity",
                "raw": "ab\\\\c\\001",
                "doc": None,
                "ratio": "Infinity",
            }
        )
    )
    assert out == {
        "price": "NaN",
        "at": "infinity",
        "raw": "YWJcYwE=",
        "doc": None,
        "ratio": "Infinity",
    }


def test_a_column_added_after_the_catalog_was_read_gets_generic_conversion() -> None:
    convert, _ = row_converters({"id": sqltypes.INTEGER()}, capture_of(POSTGRESQL))
    out = convert({"id": 1, "new": Decimal("1.5")})
    assert out == {"id": 1, "new": 1.5}
    json.dumps(out)


def test_sqlite_blobs_and_numerics() -> None:
    convert, _ = row_converters(
        {"b": sqltypes.BLOB(), "n": sqltypes.NUMERIC(), "t": sqltypes.TEXT()}, capture_of(SQLITE)
    )
    parsed = json_object('{"b": ["0102FF"], "n": 4.99, "t": "x", "other": ["00"]}')
    assert parsed is not None
    assert convert(parsed) == {"b": "AQL/", "n": "4.99", "t": "x", "other": "AA=="}


def test_small_numerics_keep_plain_notation_and_odd_timestamps_pass_through() -> None:
    out = convert_pg('{"price": 0.00000001, "at": "0001-01-01T00:30:00+01:00"}')
    assert out["price"] == "0.00000001"
    assert out["at"] == "0001-01-01T00:30:00+01:00"


def test_sqlite_moments_with_an_offset_follow_the_timestamptz_contract() -> None:
    from cdc.validate.registry import SchemaRegistry
    from cdc.validate.schemas import value_schema

    # The demo table's updated_at, and what SQLite applications commonly write there
    convert = capture_of(SQLITE).converter(sqltypes.TIMESTAMP(), False)
    assert convert("2026-11-28T17:45:52.123456+00:00") == "2026-11-28T17:45:52.123456Z"
    assert convert("2026-11-28 18:45:52+01:00") == "2026-11-28T17:45:52.000000Z"
    assert convert("2026-11-28T17:45:52.5Z") == "2026-11-28T17:45:52.500000Z"
    # Without an offset no zone is invented; numbers (epoch seconds) and other text pass
    for kept in ("2026-11-28 17:45:52", "2026-11-28", 1764351952, "yesterday"):
        assert convert(kept) == kept
    assert (
        capture_of(SQLITE)
        .converter(sqltypes.DATETIME(), False)("2026-11-28T17:45:52+00:00")
        .endswith("Z")
    )
    # Text columns are text: left alone
    assert (
        capture_of(SQLITE)
        .converter(sqltypes.TEXT(), False)("2026-11-28T17:45:52+00:00")
        .endswith("+00:00")
    )
    # The validator's schema of such a column accepts every form the capture renders
    registry = SchemaRegistry({"t": value_schema(sqltypes.TIMESTAMP(), SQLITE)})
    for value in ("2026-11-28T17:45:52.123456Z", "2026-11-28 17:45:52", 1764351952):
        assert registry.errors("t", value) == []

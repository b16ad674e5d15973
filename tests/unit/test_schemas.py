"""Schemas generated from a table's columns describe the Details the capture really renders
(both modes), and the validator's pure step judges messages against them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql

from cdc.bus.events import Change, EventRenderer
from cdc.bus.jsontext import json_object
from cdc.capture.dialects import capture_of
from cdc.capture.pgtypes import text_converter
from cdc.capture.values import converter, row_converters
from cdc.core.catalog import Column, TableShape
from cdc.core.dialects import POSTGRESQL, SQLITE
from cdc.core.errors import ConfigError
from cdc.core.tables import TableRef
from cdc.validate.registry import SchemaRegistry
from cdc.validate.schemas import (
    file_name,
    numeric_pattern,
    table_schemas,
    value_schema,
    write_schemas,
)
from cdc.validate.validator import judge

ORDERS = TableRef("public", "orders")
SHAPE = TableShape(
    ORDERS,
    (
        Column("id", sqltypes.INTEGER(), nullable=False),
        Column("total", sqltypes.NUMERIC(10, 2), nullable=False),
        Column("weight", postgresql.DOUBLE_PRECISION()),
        Column("placed_at", postgresql.TIMESTAMP(timezone=True), nullable=False),
        Column("local_time", postgresql.TIMESTAMP()),
        Column("ship_date", sqltypes.DATE()),
        Column("photo", postgresql.BYTEA()),
        Column("ref", sqltypes.UUID()),
        Column("meta", postgresql.JSONB()),
        Column("tags", postgresql.ARRAY(sqltypes.TEXT())),
        Column("code", sqltypes.VARCHAR(5)),
        Column("mood", postgresql.ENUM("sad", "ok", name="mood")),
        Column("paid", sqltypes.BOOLEAN()),
        Column("note", sqltypes.TEXT()),
    ),
    ("id",),
)
SOURCE = "legacy.shop"
MOMENT = datetime(2026, 11, 28, 17, 45, 52, 123456, tzinfo=UTC)
RENDERER = EventRenderer(SOURCE, lambda table: "{schema}.{table}.{op}")
REGISTRY = SchemaRegistry(table_schemas(SHAPE, "{schema}.{table}.{op}", SOURCE, POSTGRESQL))

# (type, value as row_to_json writes it, the same value as pgoutput sends it, wrong values)
VALUES: list[tuple[Any, Any, str, list[Any]]] = [
    (sqltypes.INTEGER(), 3, "3", ["3", 3.5, True]),
    (sqltypes.NUMERIC(10, 2), Decimal("12.50"), "12.50", [12.5, "12.5", "123456789.00", "1e3"]),
    (sqltypes.NUMERIC(4, 4), Decimal("0.1250"), "0.1250", ["1.1250", "0.125"]),
    (sqltypes.NUMERIC(), Decimal("1.000000000000000000001"), "1.000000000000000000001", [1, "x"]),
    (postgresql.DOUBLE_PRECISION(), Decimal("1.5"), "1.5", ["1.5", None]),
    (postgresql.DOUBLE_PRECISION(), "NaN", "NaN", ["nan"]),
    (sqltypes.BOOLEAN(), True, "t", ["t", 1]),
    (
        postgresql.TIMESTAMP(timezone=True),
        "2026-11-28T18:45:52.5+01:00",
        "2026-11-28 18:45:52.5+01",
        ["2026-11-28 17:45:52", "2026-11-28T17:45:52Z", "2026-11-28T17:45:52.500000+01:00"],
    ),
    (
        postgresql.TIMESTAMP(),
        "2026-11-28T17:45:52.123",
        "2026-11-28 17:45:52.123",
        ["2026-11-28T17:45:52Z", "yesterday"],
    ),
    (sqltypes.DATE(), "2026-11-28", "2026-11-28", ["28/11/2026"]),
    (postgresql.BYTEA(), "\\x00ff10", "\\x00ff10", ["\\x00ff10", "not base64!"]),
    (
        sqltypes.UUID(),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ["a0eebc99", 7],
    ),
    (postgresql.JSONB(), {"a": [1, {"b": None}]}, '{"a": [1, {"b": null}]}', []),
    (postgresql.ARRAY(sqltypes.INTEGER()), [1, None, 3], "{1,NULL,3}", [["x"], "{1,2}", 5]),
    (postgresql.ARRAY(sqltypes.INTEGER()), [[1, 2], [3, 4]], "{{1,2},{3,4}}", []),
    (sqltypes.VARCHAR(5), "abc", "abc", ["abcdef", 5]),
    (postgresql.ENUM("sad", "ok", name="mood"), "ok", "ok", ["meh"]),
    (postgresql.MONEY(), "$1.00", "$1.00", [1]),
]
OIDS = {
    sqltypes.INTEGER: 23,
    sqltypes.NUMERIC: 1700,
    postgresql.DOUBLE_PRECISION: 701,
    sqltypes.BOOLEAN: 16,
    postgresql.TIMESTAMP: 1114,
    sqltypes.DATE: 1082,
    postgresql.BYTEA: 17,
    sqltypes.UUID: 2950,
    postgresql.JSONB: 3802,
    sqltypes.VARCHAR: 1043,
    postgresql.ENUM: 0,
    postgresql.MONEY: 790,
}


def valid(column_type: Any, value: Any) -> list[str]:
    registry = SchemaRegistry(
        {
            "t": {
                "$defs": {"nested_array": {"type": "array"}},
                **value_schema(column_type, POSTGRESQL),
            }
        }
    )
    errors = registry.errors("t", value)
    assert errors is not None
    return errors


def oid_of(column_type: Any) -> int:
    if isinstance(column_type, postgresql.ARRAY):
        return 1007  # int4[]
    if isinstance(column_type, postgresql.TIMESTAMP):
        return 1184 if column_type.timezone else 1114
    return OIDS[type(column_type)]


@pytest.mark.parametrize(
    ("column_type", "image_value", "pg_text", "wrong"),
    VALUES,
    ids=[f"{v[0]!r}:{v[2]}" for v in VALUES],
)
def test_a_value_as_either_capture_mode_renders_it_is_valid_and_wrong_forms_are_not(
    column_type: Any, image_value: Any, pg_text: str, wrong: list[Any]
) -> None:
    # trigger mode: row_to_json's value through cdc.values; logical mode: text through pgtypes
    from_trigger = converter(column_type)(image_value)
    from_logical = text_converter(oid_of(column_type))(pg_text)
    assert valid(column_type, from_trigger) == []
    assert valid(column_type, from_logical) == []
    for value in wrong:
        assert valid(column_type, value) != [], value


def test_numeric_patterns_follow_precision_and_scale() -> None:
    assert numeric_pattern(10, 2) == r"^(-?\d{1,8}\.\d{2}|NaN)$"
    assert numeric_pattern(5, 0) == r"^(-?\d{1,5}|NaN)$"
    assert numeric_pattern(2, 2) == r"^(-?0\.\d{2}|NaN)$"


def row(**overrides: Any) -> dict[str, Any]:
    image = json_object(
        json.dumps(
            {
                "id": 1,
                "total": 12.25,
                "weight": 2.25,
                "placed_at": "2026-11-28T18:45:52+01:00",
                "local_time": None,
                "ship_date": "2026-12-01",
                "photo": "\\x0102",
                "ref": None,
                "meta": {"gift": True},
                "tags": ["a", None],
                "code": "AB",
                "mood": "ok",
                "paid": False,
                "note": None,
            }
        ).replace("12.25", "12.50")
    )  # as row_to_json writes numeric(10,2)
    image.update(overrides)
    convert, _ = row_converters({c.name: c.type for c in SHAPE.columns}, capture_of(POSTGRESQL))
    return convert(image)


SHAPE_BEFORE = {"columns": [{"name": "id", "type": "integer", "nullable": False}], "key": ["id"]}
SHAPE_AFTER = {
    "columns": [
        {"name": "id", "type": "integer", "nullable": False},
        {"name": "total", "type": "numeric(10,2)", "nullable": False},
    ],
    "key": ["id"],
}


def rendered(
    op: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    unchanged: tuple[str, ...] = (),
) -> list[tuple[str, dict[str, Any]]]:
    change = Change(
        ORDERS,
        op,
        before,
        after,
        "00000000000000000042",
        731,
        MOMENT,  # type: ignore[arg-type]
        unchanged=unchanged,
        identity="changelog:42",
        # a schema change names no key columns (the source sets them per change)
        key_columns=() if op == "schema" else None,
    )
    return [(e.detail_type, json.loads(e.detail)) for e in RENDERER.entries(change, ["id"])]


@pytest.mark.parametrize(
    "case",
    [
        "insert",
        "update",
        "update_no_before",
        "delete",
        "delete_key_only",
        "key_change",
        "toast",
        "truncate",
        "schema",
    ],
)
def test_every_detail_the_capture_renders_is_valid(case: str) -> None:
    events = {
        "insert": lambda: rendered("insert", None, row()),
        "update": lambda: rendered("update", row(), row(total=Decimal("13.00"))),
        "update_no_before": lambda: rendered("update", None, row()),
        "delete": lambda: rendered("delete", row(), None),
        "delete_key_only": lambda: rendered("delete", {"id": 1}, None),
        "key_change": lambda: rendered("update", row(), row(id=2)),
        "toast": lambda: rendered(
            "update", None, {k: v for k, v in row().items() if k != "note"}, unchanged=("note",)
        ),
        "truncate": lambda: rendered("truncate", None, None),
        "schema": lambda: rendered("schema", SHAPE_BEFORE, SHAPE_AFTER),
    }[case]()
    for detail_type, detail in events:
        assert REGISTRY.errors(detail_type, detail) == [], detail_type


def test_every_error_of_an_invalid_detail_is_reported_with_its_path() -> None:
    [(detail_type, detail)] = rendered("insert", None, row())
    detail["after"]["total"] = 12.5  # a number, not the exact string
    detail["after"]["code"] = "TOO-LONG"
    detail["after"]["added_later"] = 1  # a column the schema does not know
    detail["after"]["tags"] = ["a", 7]
    del detail["committed_at"]
    detail["op"] = "delete"  # not the op of this DetailType
    errors = REGISTRY.errors(detail_type, detail)
    assert errors == [
        "detail: 'committed_at' is a required property",
        "detail.after: Additional properties are not allowed ('added_later' was unexpected)",
        "detail.after.code: 'TOO-LONG' is too long",
        "detail.after.tags[1]: 7 is not of type 'string'",
        "detail.after.total: 12.5 is not of type 'string'",
        "detail.op: 'insert' was expected",
    ]


def test_a_template_without_op_gives_one_schema_checking_each_op() -> None:
    schemas = table_schemas(SHAPE, "LegacyOrder", SOURCE, POSTGRESQL)
    assert list(schemas) == ["LegacyOrder"]
    registry = SchemaRegistry(schemas)
    [(_, detail)] = rendered("delete", row(), None)
    assert registry.errors("LegacyOrder", detail) == []
    detail["after"] = row()
    assert registry.errors("LegacyOrder", detail) == ["detail.after: None was expected"]
    assert registry.errors("Unknown", detail) is None


def test_schema_files_are_written_once_and_loaded_by_detail_type(tmp_path: Path) -> None:
    schemas = table_schemas(SHAPE, "{schema}.{table}.{op}", SOURCE, POSTGRESQL)
    written = write_schemas(tmp_path, schemas)
    assert sorted(p.name for p, _ in written) == [
        f"public.orders.{op}.json"
        for op in sorted(["insert", "update", "delete", "read", "truncate", "schema"])
    ]
    # An edited file is kept by a second run, replaced with --force
    edited = tmp_path / "public.orders.insert.json"
    edited.write_text(edited.read_text().replace('"minLength": 1', '"minLength": 2', 1))
    assert dict(write_schemas(tmp_path, schemas))[edited] is False
    assert '"minLength": 2' in edited.read_text()
    assert dict(write_schemas(tmp_path, schemas, overwrite=True))[edited] is True
    assert '"minLength": 2' not in edited.read_text()
    # A hand-written schema for a new-system event: its DetailType is the file name
    (tmp_path / "OrderPlaced.json").write_text(
        json.dumps(
            {"type": "object", "required": ["order"], "properties": {"order": {"type": "object"}}}
        )
    )
    registry = SchemaRegistry.load(tmp_path)
    assert "OrderPlaced" in registry and "public.orders.insert" in registry and len(registry) == 7
    assert registry.errors("OrderPlaced", {"id": "x"}) == ["detail: 'order' is a required property"]


def test_broken_schema_files_stop_start_up_with_the_file_named(tmp_path: Path) -> None:
    (tmp_path / "A.json").write_text('{"type": "objekt"}')
    with pytest.raises(ConfigError, match="'A' is not a valid JSON Schema"):
        SchemaRegistry.load(tmp_path)
    (tmp_path / "A.json").write_text('{"x-detail-type": "B"}')
    (tmp_path / "B.json").write_text("{}")
    with pytest.raises(ConfigError, match="both describe the DetailType 'B'"):
        SchemaRegistry.load(tmp_path)
    with pytest.raises(ConfigError, match="CDC_SCHEMAS_DIR: no directory"):
        SchemaRegistry.load(tmp_path / "missing")


def test_file_names_of_odd_detail_types() -> None:
    assert file_name("public.orders.insert") == "public.orders.insert.json"
    assert file_name("../Order Placed/v2") == "_Order_Placed_v2.json"


# -- the validator's pure step ---------------------------------------------------------------


def envelope(
    detail: dict[str, Any] | str, detail_type: str = "public.orders.insert", source: str = SOURCE
) -> str:
    detail_text = detail if isinstance(detail, str) else json.dumps(detail)
    return (
        f'{{"version": "0", "id": "env-1", "detail-type": {json.dumps(detail_type)}, '
        f'"source": {json.dumps(source)}, "time": "2026-11-28T17:45:52Z", "region": "us-east-1", '
        f'"resources": [], "detail": {detail_text}}}'
    )


def test_a_valid_event_becomes_the_same_detail_under_the_valid_source() -> None:
    [(detail_type, detail)] = rendered("insert", None, row(meta={"ratio": Decimal("0.1000")}))
    # numbers inside json documents keep their exact text through the validator
    text = json.dumps(detail).replace('"ratio": 0.1', '"ratio": 0.1000')
    judged = judge(envelope(text, detail_type), "m1", REGISTRY)
    assert judged.outcome == "republish" and judged.entry is not None
    assert judged.entry.source == "valid.legacy.shop" and judged.entry.detail_type == detail_type
    assert judged.entry.event_id == detail["id"] and judged.key == (SOURCE, detail["id"])
    assert '"ratio":0.1000' in judged.entry.detail
    assert json.loads(judged.entry.detail) == json.loads(text)
    assert judged.entry.time == datetime(2026, 11, 28, 17, 45, 52, tzinfo=UTC)


def test_invalid_unknown_already_valid_and_broken_messages() -> None:
    [(detail_type, detail)] = rendered("insert", None, row())
    detail["after"]["paid"] = "yes"
    detail["after"]["mood"] = "meh"
    bad = judge(envelope(detail, detail_type), "m2", REGISTRY)
    assert bad.outcome == "dead_letter" and bad.reason.startswith("2 validation errors: ")
    assert bad.errors == (
        "detail.after.mood: 'meh' is not one of ['sad', 'ok']",
        "detail.after.paid: 'yes' is not of type 'boolean'",
    )
    assert bad.dead_letter().errors == bad.errors and bad.dead_letter().event_id == detail["id"]

    unknown = judge(envelope({"id": "n1"}, "OrderPlaced", "shop.orders"), "m3", REGISTRY)
    assert (
        unknown.outcome == "dead_letter"
        and "no schema for DetailType 'OrderPlaced'" in unknown.reason
    )

    again = judge(envelope(detail, detail_type, "valid.legacy.shop"), "m4", REGISTRY)
    assert again.outcome == "already_valid" and again.entry is None

    broken = judge("{not json", "m5", REGISTRY)
    assert broken.outcome == "dead_letter" and broken.reason.startswith(
        "not an event: body is not JSON"
    )

    no_id = judge(envelope({"x": 1}, "OrderPlaced"), "m6", SchemaRegistry({"OrderPlaced": {}}))
    assert no_id.outcome == "republish" and no_id.event_id == "env-1"  # the envelope id


def test_the_validator_retries_a_throttled_queue_instead_of_stopping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from botocore.exceptions import ClientError
    from sqlalchemy import create_engine

    from cdc.bus import sqs as queue_module
    from cdc.bus.publishers.file import NullPublisher
    from cdc.core.settings import load_settings
    from cdc.core.state import state_tables
    from cdc.validate.registry import SchemaRegistry
    from cdc.validate.validator import Validator

    class ThrottledSqs:
        def receive_message(self, **_: Any) -> dict[str, Any]:
            raise ClientError(
                {"Error": {"Code": "RequestThrottled", "Message": "slow down"}}, "ReceiveMessage"
            )

    monkeypatch.setattr(queue_module, "backoff", lambda attempt: 0.0)
    settings = load_settings(
        {"CDC_DATABASE_URL": "sqlite://", "CDC_TABLES": "t", "CDC_VALIDATE_QUEUE_URL": "q"}
    )
    validator = Validator(
        settings,
        create_engine("sqlite://"),
        state_tables(SQLITE),
        SchemaRegistry({}),
        NullPublisher(),
        ThrottledSqs(),
    )
    assert validator.poll_once() == 0
    assert validator.stats.queue_retries_by_code == {"RequestThrottled": 1}


def test_the_validators_stop_line_is_words_not_a_dataclass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging
    import threading

    from sqlalchemy import create_engine

    from cdc.bus.publishers.file import NullPublisher
    from cdc.core.settings import load_settings
    from cdc.core.state import state_tables
    from cdc.validate.validator import Validator

    stopped = threading.Event()
    stopped.set()
    validator = Validator(
        load_settings(
            {"CDC_DATABASE_URL": "sqlite://", "CDC_VALIDATE_QUEUE_URL": "q"}, require_tables=False
        ),
        create_engine("sqlite://"),
        state_tables(SQLITE),
        SchemaRegistry({}),
        NullPublisher(),
        None,
        stopped,
    )
    validator.stats.received, validator.stats.republished = 12, 9
    validator.stats.dead_letters, validator.stats.queue_retries_by_code = 3, {"Throttled": 2}
    with caplog.at_level(logging.INFO, logger="cdc.validate.validator"):
        validator.run()
    assert caplog.messages[-1] == (
        "stopped after 12 messages received: 9 republished, 0 duplicates, 3 dead letters, "
        "0 in doubt, 0 already valid, 0 rejected by the central bus; 0 database and 2 queue "
        "retries"
    )

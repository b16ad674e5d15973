from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from cdc.events import (
    BusEntry,
    Change,
    TableRef,
    build,
    dumps,
    entry_size,
    event_id,
    iso_utc,
    render_detail_type,
    to_entry,
)

WIDGETS = TableRef("public", "widgets")
MOMENT = datetime(2026, 11, 28, 17, 45, 52, 123456, tzinfo=UTC)


def change(op: str = "update", before: dict | None = None, after: dict | None = None) -> Change:
    return Change(table=WIDGETS, op=op, before=before, after=after,  # type: ignore[arg-type]
                  position="00000000000000000042", txid=731, committed_at=MOMENT,
                  identity="changelog:42:731:x")


def test_event_ids_are_deterministic_and_distinct_per_source_and_change() -> None:
    first = build(change(after={"id": 1}, before={"id": 1}), ["id"], "legacy.db")
    again = build(change(after={"id": 1}, before={"id": 1}), ["id"], "legacy.db")
    assert first[0].id == again[0].id
    assert event_id("legacy.db", "changelog:42:731:x") != event_id("legacy.other", "changelog:42:731:x")
    assert event_id("legacy.db", "a") != event_id("legacy.db", "b")


def test_detail_follows_the_contract() -> None:
    [event] = build(change(before={"id": 1, "name": "old"}, after={"id": 1, "name": "new"}),
                    ["id"], "legacy.db")
    detail = event.detail()
    assert detail == {
        "id": event.id, "op": "update", "table": "public.widgets", "key": {"id": 1},
        "before": {"id": 1, "name": "old"}, "after": {"id": 1, "name": "new"},
        "position": "00000000000000000042", "txid": 731,
        "committed_at": "2026-11-28T17:45:52.123456Z", "origin": "legacy", "unchanged": [],
        "schema_version": 1,
    }


def test_key_change_becomes_delete_then_insert_in_position_order() -> None:
    events = build(change(before={"id": 1, "n": "a"}, after={"id": 2, "n": "a"}), ["id"], "s")
    assert [(e.op, e.key) for e in events] == [("delete", {"id": 1}), ("insert", {"id": 2})]
    assert events[0].position < events[1].position
    assert "00000000000000000042" < events[0].position < "00000000000000000043"
    assert events[0].id != events[1].id


def test_delete_and_truncate_keys() -> None:
    [deleted] = build(change("delete", before={"a": 1, "b": 2, "x": 0}), ["a", "b"], "s")
    assert deleted.key == {"a": 1, "b": 2} and deleted.after is None
    [truncated] = build(change("truncate"), ["a"], "s")
    assert truncated.key is None


def test_entry_size_follows_the_aws_formula() -> None:
    # 14 bytes for Time, plus the UTF-8 bytes of Source, DetailType and Detail
    assert entry_size("ab", "cd", '{"é":1}') == 14 + 2 + 2 + len('{"é":1}'.encode())
    entry = BusEntry.create("id", "t", "ab", "cd", MOMENT, "{}")
    assert entry.size == 14 + 2 + 2 + 2


def test_to_entry_renders_detail_as_json_text() -> None:
    [event] = build(change("insert", after={"id": 1, "price": "1.50"}), ["id"], "legacy.db")
    entry = to_entry(event, "legacy.db", render_detail_type("{schema}.{table}.{op}", WIDGETS, "insert"))
    assert entry.detail_type == "public.widgets.insert"
    assert json.loads(entry.detail)["after"] == {"id": 1, "price": "1.50"}
    assert entry.time == MOMENT


def test_iso_utc_normalises_zones() -> None:
    paris = timezone(timedelta(hours=1))
    assert iso_utc(datetime(2026, 1, 1, 10, 0, tzinfo=paris)) == "2026-01-01T09:00:00.000000Z"


def test_dumps_keeps_unicode_and_turns_embedded_decimals_into_numbers() -> None:
    assert dumps({"a": "é", "n": Decimal("2"), "f": Decimal("1.5")}) == '{"a":"é","n":2,"f":1.5}'
    with pytest.raises(TypeError):
        dumps({"x": object()})

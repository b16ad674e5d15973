from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from cdc.bus.events import (
    EVENT_ID_NAMESPACE,
    BusEntry,
    Change,
    EventRenderer,
    entry_size,
    event_id,
    iso_utc,
)
from cdc.core.tables import TableRef

WIDGETS = TableRef("public", "widgets")
MOMENT = datetime(2026, 11, 28, 17, 45, 52, 123456, tzinfo=UTC)
RENDERER = EventRenderer("legacy.db", lambda table: "{schema}.{table}.{op}")


def change(op: str = "update", before: dict | None = None, after: dict | None = None) -> Change:
    return Change(
        table=WIDGETS,
        op=op,
        before=before,
        after=after,  # type: ignore[arg-type]
        position="00000000000000000042",
        txid=731,
        committed_at=MOMENT,
        identity="changelog:42:731:x",
    )


def details(c: Change, key: list[str]) -> list[dict[str, Any]]:
    return [json.loads(e.detail) for e in RENDERER.entries(c, key)]


def test_event_ids_are_uuid5_deterministic_and_distinct_per_source_and_change() -> None:
    first = details(change(after={"id": 1}, before={"id": 1}), ["id"])
    again = details(change(after={"id": 1}, before={"id": 1}), ["id"])
    assert first[0]["id"] == again[0]["id"]
    name = "legacy.db\x1fchangelog:42:731:x\x1f0"
    assert first[0]["id"] == str(uuid.uuid5(EVENT_ID_NAMESPACE, name))
    for n in range(200):  # the fast rendering agrees with the uuid module everywhere
        assert event_id("s", f"i{n}", n % 3) == str(
            uuid.uuid5(EVENT_ID_NAMESPACE, f"s\x1fi{n}\x1f{n % 3}")
        )
    assert event_id("legacy.db", "x") != event_id("legacy.other", "x")


def test_detail_follows_the_contract() -> None:
    [detail] = details(
        change(before={"id": 1, "name": "old"}, after={"id": 1, "name": "new"}), ["id"]
    )
    assert detail == {
        "id": detail["id"],
        "op": "update",
        "table": "public.widgets",
        "key": {"id": 1},
        "before": {"id": 1, "name": "old"},
        "after": {"id": 1, "name": "new"},
        "position": "00000000000000000042",
        "txid": 731,
        "committed_at": "2026-11-28T17:45:52.123456Z",
        "origin": "legacy",
        "unchanged": [],
        "schema_version": 1,
    }


def test_key_change_becomes_delete_then_insert_in_position_order() -> None:
    events = details(change(before={"id": 1, "n": "a"}, after={"id": 2, "n": "a"}), ["id"])
    assert [(e["op"], e["key"]) for e in events] == [("delete", {"id": 1}), ("insert", {"id": 2})]
    assert events[0]["before"] == {"id": 1, "n": "a"} and events[0]["after"] is None
    assert events[1]["before"] is None and events[1]["after"] == {"id": 2, "n": "a"}
    assert (
        "00000000000000000042"
        < events[0]["position"]
        < events[1]["position"]
        < "00000000000000000043"
    )
    assert events[0]["id"] != events[1]["id"]


def test_delete_and_truncate_keys() -> None:
    [deleted] = details(change("delete", before={"a": 1, "b": 2, "x": 0}), ["a", "b"])
    assert deleted["key"] == {"a": 1, "b": 2} and deleted["after"] is None
    [truncated] = details(change("truncate"), ["a"])
    assert truncated["key"] is None


def test_entry_size_follows_the_aws_formula() -> None:
    # 14 bytes for Time, plus the UTF-8 bytes of Source, DetailType and Detail
    assert entry_size("ab", "cd", '{"é":1}') == 14 + 2 + 2 + len('{"é":1}'.encode())
    entry = BusEntry.create("id", "t", "ab", "cd", MOMENT, "{}")
    assert entry.size == 14 + 2 + 2 + 2
    [rendered] = RENDERER.entries(change("insert", after={"id": 1, "name": "é" * 10}), ["id"])
    assert rendered.size == entry_size(rendered.source, rendered.detail_type, rendered.detail)


def test_entries_carry_source_detail_type_and_time() -> None:
    [entry] = RENDERER.entries(change("insert", after={"id": 1, "price": "1.50"}), ["id"])
    assert (entry.source, entry.detail_type, entry.time) == (
        "legacy.db",
        "public.widgets.insert",
        MOMENT,
    )
    assert json.loads(entry.detail)["after"] == {"id": 1, "price": "1.50"}
    named = EventRenderer("s", lambda table: "NEW_WIDGET")
    assert named.entries(change("insert", after={"id": 1}), ["id"])[0].detail_type == "NEW_WIDGET"


def test_iso_utc_normalises_zones() -> None:
    paris = timezone(timedelta(hours=1))
    assert iso_utc(datetime(2026, 1, 1, 10, 0, tzinfo=paris)) == "2026-01-01T09:00:00.000000Z"
    assert iso_utc(datetime(2026, 1, 1, 10, 0)) == "2026-01-01T10:00:00.000000Z"


def test_a_decimal_left_in_a_row_image_is_published_as_a_plain_number() -> None:
    after = {"id": 1, "doc": {"a": "é", "n": Decimal("2"), "f": Decimal("1.5")}}
    [entry] = RENDERER.entries(change("insert", after=after), ["id"])
    assert '"doc":{"a":"é","n":2,"f":1.5}' in entry.detail

"""Change events: what a source reads, what the bus receives, and the pure steps between.

A source yields ``Change`` records (one row change as the database described it). ``build``
turns each into one or two ``ChangeEvent`` values (a primary-key change becomes a delete of
the old key and an insert of the new one, as Debezium does, so consumers keyed by ``key``
never keep a row under a key that no longer exists). ``to_entry`` renders an event as the
EventBridge entry that every publisher sends.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

Op = Literal["insert", "update", "delete", "read", "truncate"]
JsonValue = Any  # JSON-compatible value after conversion by ``cdc.values``
Row = Mapping[str, JsonValue]

SCHEMA_VERSION = 1
# Namespace for deterministic event ids (uuid5); never change it: ids would change with it.
EVENT_ID_NAMESPACE = uuid.UUID("6f1c8a52-3c1e-5a0b-9d7e-2f4b8c6d1e90")
# AWS counts 14 bytes for an entry's Time field when it is set.
TIME_FIELD_BYTES = 14


@dataclass(frozen=True, slots=True)
class TableRef:
    schema: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @classmethod
    def parse(cls, text: str, default_schema: str) -> TableRef:
        schema, dot, name = text.strip().rpartition(".")
        if not name:
            raise ValueError(f"empty table name in {text!r}")
        return cls(schema if dot else default_schema, name)


@dataclass(frozen=True, slots=True)
class Change:
    """One committed row change as a source read it, values already converted to JSON."""

    table: TableRef
    op: Op
    before: Row | None
    after: Row | None
    position: str
    txid: int | None
    committed_at: datetime
    origin: str = "legacy"
    unchanged: tuple[str, ...] = ()
    # A stable identity of the change within its source (change-log id, LSN and index):
    # the event id derives from it, so a re-read change gets the same id.
    identity: str = ""


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    id: str
    op: Op
    table: TableRef
    key: Row | None
    before: Row | None
    after: Row | None
    position: str
    txid: int | None
    committed_at: datetime
    origin: str
    unchanged: tuple[str, ...] = ()

    def detail(self) -> dict[str, JsonValue]:
        return {
            "id": self.id,
            "op": self.op,
            "table": self.table.qualified,
            "key": self.key,
            "before": self.before,
            "after": self.after,
            "position": self.position,
            "txid": self.txid,
            "committed_at": iso_utc(self.committed_at),
            "origin": self.origin,
            "unchanged": list(self.unchanged),
            "schema_version": SCHEMA_VERSION,
        }


@dataclass(frozen=True, slots=True)
class BusEntry:
    """An EventBridge entry, ready to send; ``detail`` is the JSON text of ``Detail``."""

    event_id: str
    table: str
    source: str
    detail_type: str
    time: datetime
    detail: str
    size: int = field(default=0, compare=False)

    @classmethod
    def create(
        cls, event_id: str, table: str, source: str, detail_type: str, time: datetime, detail: str
    ) -> BusEntry:
        return cls(event_id, table, source, detail_type, time, detail,
                   entry_size(source, detail_type, detail))


def entry_size(source: str, detail_type: str, detail: str, resources: Sequence[str] = ()) -> int:
    """Size of a PutEvents entry by the AWS formula (Time counts 14 bytes; we always set it)."""
    size = TIME_FIELD_BYTES + len(source.encode()) + len(detail_type.encode()) + len(detail.encode())
    return size + sum(len(r.encode()) for r in resources)


def iso_utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_id(source: str, identity: str, part: int = 0) -> str:
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{source}\x1f{identity}\x1f{part}"))


def build(change: Change, key_columns: Sequence[str], source: str) -> list[ChangeEvent]:
    """Events for one change; two when an update moved the row to another primary key."""

    def key_of(row: Row | None) -> Row | None:
        return None if row is None else {c: row.get(c) for c in key_columns}

    def event(part: int, op: Op, before: Row | None, after: Row | None, position: str) -> ChangeEvent:
        return ChangeEvent(
            id=event_id(source, change.identity, part), op=op, table=change.table,
            key=key_of(after if after is not None else before), before=before, after=after,
            position=position, txid=change.txid, committed_at=change.committed_at,
            origin=change.origin, unchanged=change.unchanged,
        )

    if change.op == "update" and change.before is not None and change.after is not None:
        old_key, new_key = key_of(change.before), key_of(change.after)
        if old_key != new_key:
            # The two halves sort right after the change's own position, in this order.
            return [
                event(1, "delete", change.before, None, change.position + ".1"),
                event(2, "insert", None, change.after, change.position + ".2"),
            ]
    return [event(0, change.op, change.before, change.after, change.position)]


def _json_default(value: object) -> JsonValue:
    # Numbers inside embedded json/jsonb documents arrive as Decimal; JSON has one number type.
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and "E" not in str(value) else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: JsonValue) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def to_entry(event: ChangeEvent, source: str, detail_type: str) -> BusEntry:
    return BusEntry.create(
        event.id, event.table.qualified, source, detail_type, event.committed_at,
        dumps(event.detail()),
    )


def render_detail_type(template: str, table: TableRef, op: Op) -> str:
    return template.format(schema=table.schema, table=table.name, op=op)


def parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def json_object(text: str | None) -> dict[str, JsonValue] | None:
    if text is None:
        return None
    value = json.loads(text, parse_float=Decimal)
    if not isinstance(value, dict):
        raise ValueError("row image is not a JSON object")
    return value

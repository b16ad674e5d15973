"""Change events: what a source reads, what the bus receives, and the pure steps between.

A source yields ``Change`` records (one row change as the database described it, values
already in the contract's JSON form). ``EventRenderer.entries`` turns each into the EventBridge
entries every publisher sends: one, or two when an update moved the row to another primary
key (a delete of the old key and an insert of the new one, as Debezium does, so consumers
keyed by ``key`` never keep a row under a key that no longer exists).

This is the capture's hot path (tens of thousands of changes a second): the Detail is a dict
serialised once with orjson, ids are UUIDv5 computed with one SHA-1, and what depends only on
the table (DetailType, the JSON of the table name) is computed once.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple

import orjson

from cdc.bus.jsontext import orjson_default
from cdc.core.limits import TIME_FIELD_BYTES
from cdc.core.tables import TableRef

Op = Literal["insert", "update", "delete", "read", "truncate", "schema"]
JsonValue = Any  # a JSON value as ``cdc.capture.values`` or ``cdc.capture.pgtypes`` left it
Row = Mapping[str, JsonValue]

SCHEMA_VERSION = 1
# Namespace for deterministic event ids (uuid5); never change it: ids would change with it.
EVENT_ID_NAMESPACE = uuid.UUID("6f1c8a52-3c1e-5a0b-9d7e-2f4b8c6d1e90")


class Change(NamedTuple):
    """One committed row change as a source read it, values already converted to JSON.

    A NamedTuple, not a frozen dataclass: one is made per change, and a frozen dataclass's
    ``__init__`` (a guarded setattr per field) costs four times as much (measured)."""

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
    # The table's key columns and schema version in effect at this change (None: the
    # renderer's caller looks the key up); a change without key columns has ``key: null``.
    key_columns: tuple[str, ...] | None = None
    schema_version: int = SCHEMA_VERSION


class BusEntry(NamedTuple):
    """An EventBridge entry, ready to send; ``detail`` is the JSON text of ``Detail``
    (a NamedTuple for the same reason as ``Change``)."""

    event_id: str
    table: str
    source: str
    detail_type: str
    time: datetime
    detail: str
    size: int = 0  # by the AWS formula, see ``entry_size``

    @classmethod
    def create(
        cls, event_id: str, table: str, source: str, detail_type: str, time: datetime, detail: str
    ) -> BusEntry:
        return cls(
            event_id,
            table,
            source,
            detail_type,
            time,
            detail,
            entry_size(source, detail_type, detail),
        )


def entry_size(source: str, detail_type: str, detail: str, resources: Sequence[str] = ()) -> int:
    """Size of a PutEvents entry by the AWS formula (Time counts ``TIME_FIELD_BYTES``; we
    always set it)."""
    size = (
        TIME_FIELD_BYTES + len(source.encode()) + len(detail_type.encode()) + len(detail.encode())
    )
    return size + sum(len(r.encode()) for r in resources)


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds and 'Z': one form whatever the session's TimeZone."""
    # orjson writes an aware UTC datetime five times faster than isoformat() (which calls
    # utcoffset() through Python); it leaves out a zero fraction, and other zones keep their
    # offset: those take the general path.
    quoted = orjson.dumps(moment, option=orjson.OPT_UTC_Z)
    if len(quoted) == 29 and quoted[27] == 0x5A:  # b'"2026-11-28T17:45:52.500000Z"'
        return quoted[1:28].decode()
    text = moment.isoformat(timespec="microseconds")
    if text.endswith("+00:00"):
        return text[:-6] + "Z"
    if moment.tzinfo is None:
        return text + "Z"
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes
# The UUID variant digit (RFC 4122: binary 10xx) of each hex digit of the digest at that place.
_VARIANT: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def event_ids(source: str) -> Callable[[str, int], str]:
    """``event_id`` of one source, with the hash of its name prefix computed once."""
    prefix = hashlib.sha1(_NAMESPACE_BYTES + f"{source}\x1f".encode())

    def make(identity: str, part: int = 0) -> str:
        digest = prefix.copy()
        digest.update(f"{identity}\x1f{part}".encode())
        d = digest.hexdigest()
        return f"{d[:8]}-{d[8:12]}-5{d[13:16]}-{_VARIANT[d[16]]}{d[17:20]}-{d[20:32]}"

    return make


def event_id(source: str, identity: str, part: int = 0) -> str:
    """``str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{source}\\x1f{identity}\\x1f{part}"))``, computed
    without the uuid module's overhead (a quarter of the cost of rendering an event)."""
    return event_ids(source)(identity, part)


def render_detail_type(template: str, table: TableRef, op: Op) -> str:
    return template.format(schema=table.schema, table=table.name, op=op)


def _key(image: Row, columns: Sequence[str]) -> Row:
    if len(columns) == 1:  # most keys: no comprehension (a function call in Python 3.11)
        column = columns[0]
        return {column: image.get(column)}
    return {c: image.get(c) for c in columns}


class EventRenderer:
    """Renders changes of one source as bus entries, with the per-table work cached."""

    def __init__(self, source: str, template_for: Callable[[TableRef], str]) -> None:
        self.source = source
        self._template_for = template_for
        self._source_bytes = len(source.encode())
        self._event_id = event_ids(source)
        # The changes of one transaction share one commit time: render it once.
        self._last_moment: datetime | None = None
        self._last_iso = ""
        # (table, op) -> (qualified name, DetailType, the bytes an entry has besides its Detail)
        self._tables: dict[tuple[TableRef, str], tuple[str, str, int]] = {}

    def _table(self, table: TableRef, op: Op) -> tuple[str, str, int]:
        found = self._tables.get((table, op))
        if found is None:
            name = render_detail_type(self._template_for(table), table, op)
            found = (
                table.qualified,
                name,
                TIME_FIELD_BYTES + self._source_bytes + len(name.encode()),
            )
            self._tables[(table, op)] = found
        return found

    def _iso(self, moment: datetime) -> str:
        if moment is not self._last_moment:
            self._last_moment, self._last_iso = moment, iso_utc(moment)
        return self._last_iso

    def entries(self, change: Change, key_columns: Sequence[str]) -> list[BusEntry]:
        out: list[BusEntry] = []
        self.render_into(out, change, key_columns)
        return out

    def render_into(self, out: list[BusEntry], change: Change, key_columns: Sequence[str]) -> None:
        """Append the change's entries to ``out``: one, or two when an update changed the key.
        ``key_columns`` serve a change that does not name its own."""
        if change.key_columns is not None:
            key_columns = change.key_columns
        before, after = change.before, change.after
        image = after if after is not None else before
        # A schema change, or a table without a key (REPLICA IDENTITY FULL): ``key`` is null.
        key = None if image is None or not key_columns else _key(image, key_columns)
        if before is not None and change.op == "update" and key is not None:
            if change.unchanged:
                # A key column the new tuple did not send (an unchanged TOASTed value) still
                # holds the old value: the key moved only if a column that was sent differs.
                key = {
                    c: before.get(c) if c in change.unchanged else key.get(c) for c in key_columns
                }
            old_key = _key(before, key_columns)
            if old_key != key:
                # The two halves sort right after the change's own position, in this order.
                out.append(
                    self._entry(change, 1, "delete", old_key, before, None, change.position + ".1")
                )
                out.append(
                    self._entry(change, 2, "insert", key, None, after, change.position + ".2")
                )
                return
        out.append(self._entry(change, 0, change.op, key, before, after, change.position))

    def _entry(
        self,
        change: Change,
        part: int,
        op: Op,
        key: Row | None,
        before: Row | None,
        after: Row | None,
        position: str,
    ) -> BusEntry:
        identifier = self._event_id(change.identity, part)
        table, detail_type, fixed_bytes = self._table(change.table, op)
        detail = orjson.dumps(
            {
                "id": identifier,
                "op": op,
                "table": table,
                "key": key,
                "before": before,
                "after": after,
                "position": position,
                "txid": change.txid,
                "committed_at": self._iso(change.committed_at),
                "origin": change.origin,
                "unchanged": change.unchanged,
                "schema_version": change.schema_version,
            },
            # Numbers inside embedded json/jsonb documents may arrive as Decimal.
            default=orjson_default,
        )
        return BusEntry(
            identifier,
            table,
            self.source,
            detail_type,
            change.committed_at,
            detail.decode(),
            fixed_bytes + len(detail),
        )


def parse_iso(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def entry_to_json(entry: BusEntry) -> str:
    return json.dumps(
        {
            "Source": entry.source,
            "DetailType": entry.detail_type,
            "Time": entry.time.isoformat(),
            "Detail": entry.detail,
            "EventId": entry.event_id,
            "Table": entry.table,
        }
    )


def entry_from_json(text: str) -> BusEntry:
    data: dict[str, Any] = json.loads(text)
    return BusEntry.create(
        data["EventId"],
        data["Table"],
        data["Source"],
        data["DetailType"],
        parse_iso(data["Time"]),
        data["Detail"],
    )

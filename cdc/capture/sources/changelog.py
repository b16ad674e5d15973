"""The ``changelog`` source: rows that the capture triggers wrote, read in id order.

Why reading is safe: the worker never remembers "the last id read". It reads whatever rows
are visible, oldest id first, and deletes exactly the rows the bus accepted. A transaction that
took a low id early and commits late is simply read on a later pass, so no committed change is
skipped. Per-key order holds because two transactions cannot change one key at once: the
second waits for the first's row lock, so its trigger takes its id after the first committed,
and the first's row is visible to any read that sees the second's.

On PostgreSQL, reads and acknowledgements go through ``cdc.capture.sources.readahead``
(statements sent ahead on a connection of its own); a batch with dead letters, and everything
on SQLite, uses the source's one held connection (a checkout per batch, with its liveness ping,
cost more than the batch itself). A failed connection is dropped and the next call opens a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, func, select

from cdc.bus.events import Change, Op, parse_iso
from cdc.bus.jsontext import json_object
from cdc.bus.publishers import Rejection
from cdc.capture import checkpoints, deadletters
from cdc.capture.catalog import Catalog, TableInfo
from cdc.capture.dialects import capture_of
from cdc.capture.history import SchemaHistory, Version
from cdc.capture.sources import WATERMARK_OP, Backlog, Batch, Mark, Unrenderable
from cdc.capture.sources.readahead import ReadAhead
from cdc.core.database import conninfo_of
from cdc.core.dialects import dialect_of
from cdc.core.errors import SetupError
from cdc.core.state import StateTables
from cdc.core.tables import TableRef

log = logging.getLogger(__name__)
STREAM = "changelog"
_OPS: dict[str, Op] = {
    "insert": "insert",
    "update": "update",
    "delete": "delete",
    "truncate": "truncate",
}
SCHEMA_OP = "schema"  # a row the DDL event trigger wrote: the table's next schema version
_SPECIAL_OPS = frozenset((WATERMARK_OP, SCHEMA_OP))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What makes a change unrenderable (set aside as a dead letter) rather than an error to retry:
# its table is gone from the database and from the history, or a value does not convert.
UNRENDERABLE = (SetupError, ValueError, TypeError, KeyError, ArithmeticError)
_MICROSECOND = timedelta(microseconds=1)


class ChangeLogSource:
    waits_for_changes = False

    def __init__(self, engine: Engine, tables: StateTables, default_schema: str) -> None:
        self.engine = engine
        self.state = tables
        self.default_schema = default_schema
        self.catalog = Catalog(engine, default_schema)
        self.history = SchemaHistory(engine, tables, default_schema)
        # Per table, its newest version known: a change after its position takes it at once.
        self._newest: dict[str, Version] = {}
        self._warned: set[str] = set()
        self._connection: Connection | None = None
        self._capture = capture_of(dialect_of(engine))
        self._ahead: ReadAhead | None = None
        self._log_table = log_table = tables.qualified(tables.changelog)
        self._select = self._capture.changelog_select(log_table)
        if self._capture.reads_ahead:
            # Reads and acknowledgements without dead letters: sent ahead (``ReadAhead``).
            # No startup options: a connection pooler may refuse them.
            self._ahead = ReadAhead(
                conninfo_of(engine.url, "cdc", options=None),
                log_table,
                tables.qualified(tables.checkpoints),
                STREAM,
            )

    def table(self, name: str) -> TableInfo:
        """The table as it is now (its newest version)."""
        versions = self.history.versions(name)
        return versions[-1].info if versions else self.catalog.table(name)

    def _info_at(self, name: str, position: str) -> TableInfo:
        """The table's version in effect at ``position`` (the catalog, for a table without a
        schema history)."""
        version = self.history.in_effect(name, position)
        versions = self.history.versions(name)
        if version is None:  # DDL not tracked: the catalog, read again when columns change
            version = Version(1, "", {}, self.catalog.table(name))
        self._newest[name] = versions[-1] if versions else version
        return version.info

    def _unknown_columns(self, name: str, info: TableInfo) -> TableInfo:
        if self.history.versions(name):
            # Tracked DDL, yet a column no version has: the event trigger was removed. The
            # checked conversion keeps the row (unknown columns as plain JSON).
            if name not in self._warned:
                self._warned.add(name)
                log.warning(
                    "%s has columns its schema history lacks: is the DDL event trigger still "
                    "installed? (run `cdc setup` again)",
                    name,
                )
            return info
        log.info("columns of %s changed; reading its catalog again", name)
        self.catalog.forget(name)
        info = self.catalog.table(name)
        self._newest[name] = Version(1, "", {}, info)
        return info

    def _connected(self) -> Connection:
        if self._connection is None or self._connection.closed or self._connection.invalidated:
            self._connection = self.engine.connect()
        return self._connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.invalidate()
                self._connection.close()
            finally:
                self._connection = None

    def read(self, limit: int) -> Batch:
        ahead = self._ahead
        if ahead is None:
            return self._batch(self._fetch(limit), limit)
        rows = ahead.take(limit)
        batch = self._batch(rows, limit)  # built while the last acknowledgement runs
        ahead.settle()  # this batch goes out only once the last one is deleted
        if len(rows) == limit:
            ahead.read_ahead([row[0] for row in rows], limit)
        return batch

    def _fetch(self, limit: int) -> list[Any]:
        """The batch's rows read in one go (without read-ahead)."""
        try:
            connection = self._connected()
            # The driver's own cursor: plain tuples, none of the result machinery, per row.
            raw: Any = connection.connection.driver_connection
            cursor = raw.cursor()
            cursor.execute(self._select, (limit,))
            rows: list[Any] = cursor.fetchall()
            # End the driver's transaction (SQLAlchemy did not open it, so its rollback would
            # not): an idle transaction would hold locks on the change log and hold back vacuum.
            raw.rollback()
        except Exception:
            self._drop_connection()
            raise
        return rows

    def _batch(self, rows: list[Any], limit: int) -> Batch:
        change = self._change
        if any(row[2] in _SPECIAL_OPS for row in rows):
            return self._with_marks(rows, limit)
        try:
            changes = [change(*row) for row in rows]
        except UNRENDERABLE:
            return self._with_marks(rows, limit)  # one by one, to set the bad ones aside
        return Batch(
            changes,
            [row[0] for row in rows],
            changes[-1].position if changes else "",
            drained=len(rows) < limit,
        )

    def _with_marks(self, rows: list[Any], limit: int) -> Batch:
        """A batch holding backfill watermarks (acknowledged, never published) or schema
        changes (published as ``schema`` events, and taken as the table's new version)."""
        changes: list[Change] = []
        marks: list[Mark] = []
        unrenderable: list[Unrenderable] = []
        for row in rows:
            try:
                if row[2] == WATERMARK_OP:
                    token = orjson.loads(row[4]).get("token", "") if row[4] else ""
                    marks.append(Mark(len(changes), token, f"{row[0]:020d}"))
                elif row[2] == SCHEMA_OP:
                    changes.append(self._schema_change(*row))
                else:
                    changes.append(self._change(*row))
            except UNRENDERABLE as error:
                unrenderable.append(self._unrenderable(row, error))
        positions = [c.position for c in changes] + [u.change.position for u in unrenderable]
        return Batch(
            changes,
            [row[0] for row in rows],
            max(positions, default=""),
            marks=marks,
            drained=len(rows) < limit,
            unrenderable=unrenderable,
        )

    def _unrenderable(self, row: Any, error: BaseException) -> Unrenderable:
        """A change-log row the worker cannot convert, as stored (JSON parsed exactly, or the
        text itself), for the dead letters."""
        log_id, table_name, op, before_text, after_text, txid, origin, captured_at = row[:8]
        moment = parse_iso(captured_at) if isinstance(captured_at, str) else captured_at
        position, identity = _position_and_identity(log_id, txid, moment)
        ref = TableRef.parse(table_name, self.default_schema)
        reason = f"cannot convert the change at position {position} of {ref.qualified}: {error}"
        log.error("dead letter: %s", reason)
        change = Change(
            ref,
            _OPS.get(op, "update"),
            _raw_image(before_text),
            _raw_image(after_text),
            position,
            txid,
            moment,
            origin or "legacy",
            (),
            identity,
            (),
        )
        return Unrenderable(change, reason)

    def _change(
        self,
        log_id: int,
        table_name: str,
        op: str,
        before_text: str | None,
        after_text: str | None,
        txid: int | None,
        origin: str | None,
        captured_at: datetime | str,
        position: str | None = None,
        identity: str | None = None,
    ) -> Change:
        moment = parse_iso(captured_at) if isinstance(captured_at, str) else captured_at
        if identity is None or position is None:  # not made by the read (readahead makes both)
            position, identity = _position_and_identity(log_id, txid, moment)
        newest = self._newest.get(table_name)
        if newest is not None and position > newest.position:
            info = newest.info
        else:
            info = self._info_at(table_name, position)
        parse = info.parse
        before = None if before_text is None else parse(before_text)
        after = None if after_text is None else parse(after_text)
        image = after if after is not None else before
        # Both images have the same columns (one row type): one check covers them.
        convert = info.convert_known or info.convert
        if image is not None and not image.keys() <= info.columns.keys():
            info = self._unknown_columns(table_name, info)
            convert = info.convert  # which checks: the column may be gone again
        return Change(
            info.ref,
            _OPS[op],
            None if before is None else convert(before),
            None if after is None else convert(after),
            position,
            txid,
            moment,
            origin or "legacy",
            (),
            identity,
            info.key,
            info.version,
        )

    def _schema_change(
        self,
        log_id: int,
        table_name: str,
        _op: str,
        before_text: str | None,
        after_text: str | None,
        txid: int | None,
        origin: str | None,
        captured_at: datetime | str,
        position: str | None = None,
        identity: str | None = None,
    ) -> Change:
        moment = parse_iso(captured_at) if isinstance(captured_at, str) else captured_at
        if identity is None or position is None:
            position, identity = _position_and_identity(log_id, txid, moment)
        described = orjson.loads(after_text or "{}")
        version = self.history.add(table_name, described["version"], position, described["shape"])
        self._newest[table_name] = self.history.versions(table_name)[-1]
        return Change(
            version.info.ref,
            "schema",
            None if before_text is None else orjson.loads(before_text),
            version.shape,
            position,
            txid,
            moment,
            origin or "legacy",
            (),
            identity,
            (),
            version.number,
        )

    def ack(self, batch: Batch, rejections: Sequence[Rejection]) -> None:
        if not batch.ack_ids:
            return
        if self._ahead is not None:
            if not rejections:
                self._ahead.acknowledge(batch.ack_ids, batch.last_position, len(batch.changes))
                return
            self._ahead.quiesce()  # dead letters: one transaction with the DELETE, below
        try:
            connection = self._connected()
            with connection.begin():
                deadletters.store(connection, self.state, rejections)
                raw: Any = connection.connection.driver_connection
                self._capture.delete_changes(raw.cursor(), self._log_table, batch.ack_ids)
                checkpoints.store(
                    connection, self.state, STREAM, batch.last_position, len(batch.changes)
                )
        except Exception:
            self._drop_connection()
            raise

    def backlog(self) -> Backlog:
        table = self.state.changelog
        with self.engine.connect() as connection:
            count, oldest = connection.execute(
                select(func.count(), func.min(table.c.captured_at))
            ).one()
        moment = None if oldest is None else dialect_of(self.engine).read_moment(oldest)
        return Backlog(pending=int(count), oldest=moment)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
        self._drop_connection()
        self.engine.dispose()


def _raw_image(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        return json_object(text)
    except ValueError:
        return {"_raw": text}


def _position_and_identity(log_id: int, txid: int | None, moment: datetime) -> tuple[str, str]:
    """What the read-ahead query makes on the server, made here (SQLite, dead-letter path).
    Zero-padded, positions sort as text in id order (per key, commit order). The change-log id
    alone could repeat if the state schema were rebuilt; the transaction id and capture time
    (in microseconds, whatever the session's TimeZone) make the identity unique for good."""
    return (
        f"{log_id:020d}",
        f"changelog:{log_id}:{txid}:{(moment - _EPOCH) // _MICROSECOND}",
    )

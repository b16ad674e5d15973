"""The ``changelog`` source: rows that the capture triggers wrote, read in id order.

Why reading is safe: the worker never remembers "the last id read". It reads whatever rows
are visible, oldest id first, and deletes exactly the rows the bus accepted. A transaction that
took a low id early and commits late is simply read on a later pass, so no committed change is
skipped. Per-key order holds because two transactions cannot change one key at once: the
second waits for the first's row lock, so its trigger takes its id after the first committed,
and the first's row is visible to any read that sees the second's.

On PostgreSQL, reads and acknowledgements go through ``cdc.sources.readahead`` (statements sent
ahead on a connection of its own); a batch with dead letters, and everything on SQLite, uses the
source's one held connection (a checkout per batch, with its liveness ping, cost more than the
batch itself). A failed connection is dropped and the next call opens a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, func, select

from cdc.bus.events import Change, Op, parse_iso
from cdc.bus.publishers import Rejection
from cdc.capture import checkpoints, deadletters
from cdc.capture.catalog import Catalog, TableInfo
from cdc.capture.sources import WATERMARK_OP, Backlog, Batch, Mark
from cdc.capture.sources.readahead import ReadAhead
from cdc.core.database import conninfo_of
from cdc.core.state import StateTables

log = logging.getLogger(__name__)
STREAM = "changelog"
_OPS: dict[str, Op] = {
    "insert": "insert",
    "update": "update",
    "delete": "delete",
    "truncate": "truncate",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class ChangeLogSource:
    waits_for_changes = False

    def __init__(self, engine: Engine, tables: StateTables, default_schema: str) -> None:
        self.engine = engine
        self.state = tables
        self.default_schema = default_schema
        self.catalog = Catalog(engine, default_schema)
        self._connection: Connection | None = None
        self._sqlite = engine.dialect.name == "sqlite"
        self._ahead: ReadAhead | None = None
        log_table = tables.qualified(tables.changelog)
        if self._sqlite:
            self._select = (
                f"SELECT id, table_name, op, before, after, txid, origin, captured_at "
                f"FROM {log_table} ORDER BY id LIMIT ?"
            )
            self._delete = f"DELETE FROM {log_table} WHERE id = ?"
        else:
            self._delete = f"DELETE FROM {log_table} WHERE id = ANY(%s)"  # with dead letters
            # Reads and acknowledgements without dead letters: sent ahead (cdc.sources.readahead).
            # No startup options: a connection pooler may refuse them.
            self._ahead = ReadAhead(
                conninfo_of(engine.url, "cdc", options=None),
                log_table,
                tables.qualified(tables.checkpoints),
                STREAM,
            )

    def table(self, name: str) -> TableInfo:
        return self.catalog.table(name)

    def _refresh(self, name: str) -> TableInfo:
        log.info("columns of %s changed; reading its catalog again", name)
        self.catalog.forget(name)
        return self.catalog.table(name)

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
        """The batch's rows read in one go (SQLite)."""
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
        if any(row[2] == WATERMARK_OP for row in rows):
            return self._with_marks(rows, limit)
        changes = [change(*row) for row in rows]
        return Batch(
            changes,
            [row[0] for row in rows],
            changes[-1].position if changes else "",
            drained=len(rows) < limit,
        )

    def _with_marks(self, rows: list[Any], limit: int) -> Batch:
        """A batch holding backfill watermarks: they are acknowledged, never published."""
        changes: list[Change] = []
        marks: list[Mark] = []
        for row in rows:
            if row[2] == WATERMARK_OP:
                token = orjson.loads(row[4]).get("token", "") if row[4] else ""
                marks.append(Mark(len(changes), token, f"{row[0]:020d}"))
            else:
                changes.append(self._change(*row))
        return Batch(
            changes,
            [row[0] for row in rows],
            changes[-1].position if changes else "",
            marks=marks,
            drained=len(rows) < limit,
        )

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
        info = self.catalog.table(table_name)
        parse = info.parse
        before = None if before_text is None else parse(before_text)
        after = None if after_text is None else parse(after_text)
        image = after if after is not None else before
        # Both images have the same columns (one row type): one check covers them.
        convert = info.convert_known or info.convert
        if image is not None and not image.keys() <= info.columns.keys():
            info = self._refresh(table_name)
            convert = info.convert  # which checks: the column may be gone again
        moment = parse_iso(captured_at) if isinstance(captured_at, str) else captured_at
        if identity is None or position is None:  # not made by the read (readahead makes both)
            # The change-log id alone could repeat if the state schema were rebuilt; the
            # transaction id and capture time (in microseconds, whatever the session's TimeZone)
            # make the identity unique for good.
            identity = f"changelog:{log_id}:{txid}:{(moment - _EPOCH) // _MICROSECOND}"
            # Zero-padded, so positions sort as text in id order (per key, commit order).
            position = f"{log_id:020d}"
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
                cursor = raw.cursor()
                if self._sqlite:
                    cursor.executemany(self._delete, [(i,) for i in batch.ack_ids])
                else:
                    # Not waiting for this commit to reach the disk is safe: if a crash loses
                    # it, the rows (and the dead letters, in the same transaction) come back
                    # and are published again with the same ids. It saves a flush per batch.
                    cursor.execute("SET LOCAL synchronous_commit = off")
                    cursor.execute(self._delete, (list(batch.ack_ids),))
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
        if isinstance(oldest, str):
            oldest = parse_iso(oldest)
        return Backlog(pending=int(count), oldest=oldest)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
        self._drop_connection()
        self.engine.dispose()

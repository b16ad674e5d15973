"""Backfill: the rows that already exist, published as ``read`` events beside the live stream.

The capture worker runs backfills itself, one chunk at a time between its stream batches, so
backfill events and stream events share one publisher, one position order and one lease. A
chunk meets the stream by the watermark method of Netflix's DBLog, tightened:

1. take a snapshot of which transactions are visible (just before the read);
2. read the next keyset page of the table (primary-key order, no OFFSET, one short statement,
   no lock beyond it);
3. write a high watermark into the stream: a change-log row, or a logical message;
4. while the stream runs up to the watermark, drop from the chunk every key that a transaction
   *invisible to the snapshot* changed: the stream carries that key's newer value;
5. at the watermark, the chunk's other rows become events positioned right after it
   (``<watermark position>.<index>``), and once the bus accepted them the run's progress moves
   to the chunk's last key.

DBLog drops keys changed between a low and a high watermark; the snapshot names exactly the
transactions the read could not see, so no low watermark is written. Dropping more keys than
needed is always safe (the stream has their value), which is why a snapshot taken just before
the read may stand for the read's own. Two mode-specific details:

- change log: ids are taken at write time, not at commit time, so a transaction that was
  that began writing before the watermark may still commit rows with lower ids. The chunk is
  emitted only after every transaction with a lower xid than the watermark's has ended (the
  oldest running xid passed it: a snapshot's in-progress list alone would miss a writer whose
  xid is past the snapshot's xmax), at the first change
  past the watermark in a read that began after that (``Pending.ready``).
- logical: a transaction is streamed once its commit is in the WAL, a moment before it becomes
  visible to new snapshots. A chunk whose snapshot still lists a transaction the worker has
  already streamed is read again (``_RECENT_XIDS``).

For every key, the last event in ``position`` order carries the row's current value; a killed
backfill resumes after the last chunk the bus accepted, and a chunk read again gives its rows
the same event ids (``backfill:<run>:<key>``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from sqlalchemy import Connection, Engine, func, select, text

from cdc.bus.events import Change
from cdc.capture.catalog import TableInfo
from cdc.capture.sources import WATERMARK_OP, WATERMARK_PREFIX, Batch
from cdc.capture.triggers import sqlite_image
from cdc.core.errors import CdcError, is_transient_db_error
from cdc.core.state import StateTables
from cdc.core.tables import quote_ident

log = logging.getLogger(__name__)

ROW_ALIAS = "cdc_backfill_row"
# logical mode: xids of the transactions streamed last (the race they guard against lasts
# microseconds, so the last thousand are plenty)
_RECENT_XIDS = 1_000
_REFRESH_SECONDS = 1.0
Mode = Literal["changelog", "logical"]


def key_of(row: dict[str, Any] | Any, key: Sequence[str]) -> bytes:
    """A hashable identity of a row's key, from its contract JSON values."""
    return orjson.dumps([row.get(c) for c in key])


@dataclass(frozen=True)
class Snapshot:
    """A PostgreSQL snapshot (``pg_current_snapshot()``), for 64-bit transaction ids."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, value: str) -> Snapshot:
        xmin, xmax, xip = value.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def sees(self, xid: int) -> bool:
        return xid < self.xmin or (xid < self.xmax and xid not in self.xip)

    def sees_xid32(self, xid: int) -> bool:
        """For the 32-bit xids of the replication protocol: placed in the epoch nearest xmax."""
        full = (self.xmax & ~0xFFFFFFFF) | xid
        if full - self.xmax >= 1 << 31:
            full -= 1 << 32
        return self.sees(full)


@dataclass
class Run:
    """One backfill of one table (a row of the ``backfills`` state table)."""

    id: int
    table: str
    where: str | None
    chunk_size: int
    rate: float | None
    last_key: list[Any] | None
    rows_done: int = 0
    chunks_done: int = 0
    rows_total: int | None = None
    status: str = "running"
    started_at: datetime | str | None = None
    updated_at: datetime | str | None = None


@dataclass
class Pending:
    """A chunk read and waiting for its watermark to come through the stream."""

    run: Run
    info: TableInfo
    rows: list[dict[str, Any]]
    keys: list[bytes]
    last_key: list[Any] | None
    full: bool  # as many rows as asked: more may follow
    invisible: Callable[[Change], bool]
    token: str
    read_at: datetime
    position: str = ""  # the watermark's position, once known (change log: when written)
    # change log: the watermark's xid; every transaction with a lower one may hold lower ids
    writers_below: int = 0
    ready: bool = False
    dropped: set[bytes] = field(default_factory=set)
    truncated: bool = False
    emitted: int = -1  # rows published (-1: not emitted yet)


class TableReader:
    """Keyset pages of one table in primary-key order, each row as the contract's JSON."""

    def __init__(self, connection: Connection, info: TableInfo, where: str | None) -> None:
        self.info = info
        self.key = info.key
        self.sqlite = connection.dialect.name == "sqlite"
        ref = info.ref
        columns = [f"{ROW_ALIAS}.{quote_ident(c)}" for c in self.key]
        if self.sqlite:
            image = sqlite_image(info.columns, ROW_ALIAS)
            source = f"{quote_ident(ref.name)} AS {ROW_ALIAS}"
            placeholders = ", ".join("?" for _ in self.key)
            selected = ", ".join(columns)
            self._limit = "LIMIT ?"
        else:
            types = self._key_types(connection)
            image = f"row_to_json({ROW_ALIAS})::text"
            source = f"{ref.quoted} AS {ROW_ALIAS}"
            # Keys travel as text (the server's own output form) and are cast back: any type
            # that sorts works, and what is stored for resuming is plain JSON.
            placeholders = ", ".join(f"%s::{types[c]}" for c in self.key)
            selected = ", ".join(f"{c}::text" for c in columns)
            self._limit = "LIMIT %s"
        self._source = source
        self._head = f"SELECT {image}, {selected} FROM {source}"
        self._after = f"({', '.join(columns)}) > ({placeholders})"
        self._where = f"({where})" if where else ""
        self._order = f"ORDER BY {', '.join(columns)}"

    def _key_types(self, connection: Connection) -> dict[str, str]:
        ref = self.info.ref
        rows = connection.execute(
            text(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = CAST(:table AS regclass) AND a.attnum > 0 "
                "AND NOT a.attisdropped"
            ),
            {"table": ref.quoted},
        ).all()
        return {name: kind for name, kind in rows}

    def sql(self, after: list[Any] | None) -> str:
        conditions = [c for c in (self._after if after is not None else "", self._where) if c]
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        return f"{self._head}{where} {self._order} {self._limit}"

    def page(
        self, raw: Any, after: list[Any] | None, limit: int
    ) -> tuple[list[dict[str, Any]], list[Any] | None]:
        """Rows after ``after`` (a key as ``last_key`` gave it), and the last key read."""
        cursor = raw.cursor()
        cursor.execute(self.sql(after), (*(after or ()), limit))
        fetched = cursor.fetchall()
        parse, convert = self.info.parse, self.info.convert
        rows = [convert(parse(row[0])) for row in fetched]
        last = list(fetched[-1][1:]) if fetched else after
        return rows, last

    def count(self, connection: Connection) -> int:
        where = f" WHERE {self._where}" if self._where else ""
        return int(
            connection.execute(text(f"SELECT count(*) FROM {self._source}{where}")).scalar() or 0
        )


class Backfiller:
    """The worker's side of backfills: reads chunks, weaves them into batches, records progress."""

    def __init__(
        self, engine: Engine, state: StateTables, mode: Mode, table_info: Callable[[str], TableInfo]
    ) -> None:
        self.engine = engine
        self.state = state
        self.mode = mode
        self.sqlite = engine.dialect.name == "sqlite"
        self.table_info = table_info
        self.runs: list[Run] = []
        self.pending: Pending | None = None
        self.rows_published = 0
        self._readers: dict[int, TableReader] = {}  # by run id
        self._refreshed_at = 0.0
        self._turn = 0
        self._not_before: dict[int, float] = {}  # run id -> monotonic time (rate limit)
        self._recent: dict[int, None] = {}  # logical: xids streamed lately, oldest first
        self._last_xid: int | None = None

    @property
    def busy(self) -> bool:
        """Whether there is backfill work the worker should not sleep over (a rate-limited
        run waiting for its turn, or a chunk waiting for writers to end, is not)."""
        if self.pending is not None:
            # A change-log chunk waiting for a long transaction to end is not worth a busy loop.
            return self.pending.ready
        now = time.monotonic()
        return any(self._not_before.get(run.id, 0.0) <= now for run in self.runs)

    # -- before each read ---------------------------------------------------------------

    def prepare(self) -> None:
        """Called before the worker reads the stream: start the next chunk, or check whether
        the one in flight may be emitted after this read."""
        pending = self.pending
        if pending is not None:
            if not pending.ready:
                self._check_ready(pending)
            return
        now = time.monotonic()
        if now - self._refreshed_at >= _REFRESH_SECONDS:
            idle = not self.runs
            self._refresh()
            self._refreshed_at = now
            if idle and self.mode == "logical":
                # Streamed xids are remembered only while backfills run: the first chunk waits
                # one round, so that the transactions streamed just before it are known.
                return
        runnable = [r for r in self.runs if self._not_before.get(r.id, 0.0) <= now]
        if not runnable:
            return
        self._turn = (self._turn + 1) % len(runnable)
        self._start(runnable[self._turn])

    def _refresh(self) -> None:
        table = self.state.backfills
        with self.engine.connect() as connection:
            rows = (
                connection.execute(
                    select(table).where(table.c.status == "running").order_by(table.c.id)
                )
                .mappings()
                .all()
            )
        known = {r.id: r for r in self.runs}
        self.runs = [known.get(row["id"]) or run_of(row) for row in rows]

    def _reader(self, run: Run, connection: Connection) -> TableReader:
        reader = self._readers.get(run.id)
        info = self.table_info(run.table)
        if reader is None or reader.info is not info:  # first chunk, or the table changed
            reader = TableReader(connection, info, run.where)
            self._readers[run.id] = reader
        return reader

    def _start(self, run: Run) -> None:
        with self.engine.connect() as connection:
            reader = self._reader(run, connection)
            raw: Any = connection.connection.driver_connection
            invisible, snapshot = self._snapshot(raw)
            if (
                snapshot is not None
                and self.mode == "logical"
                and any(not snapshot.sees_xid32(xid) for xid in self._recent)
            ):
                # A transaction we already streamed is not yet visible to new snapshots; it
                # will be in a moment. Reading now could miss its rows: try again next round.
                raw.rollback()
                return
            try:
                rows, last = reader.page(raw, run.last_key, run.chunk_size)
            except Exception as exc:
                raw.rollback()
                if not is_transient_db_error(exc):  # a statement error (a bad --where)
                    self._fail(run, f"reading {run.table} failed: {exc}")
                    return
                raise
            raw.rollback()  # end the read; nothing is held while the stream catches up
        if not rows:
            self._store_progress(run, done=True)
            return
        key = reader.key
        pending = Pending(
            run,
            reader.info,
            rows,
            [key_of(r, key) for r in rows],
            last,
            len(rows) >= run.chunk_size,
            invisible,
            uuid.uuid4().hex,
            datetime.now(UTC),
        )
        self._write_watermark(pending)
        self.pending = pending
        if not pending.ready:
            self._check_ready(pending)  # most often nothing older is running: emit at once

    def _snapshot(self, raw: Any) -> tuple[Callable[[Change], bool], Snapshot | None]:
        cursor = raw.cursor()
        if self.sqlite:
            # One writer at a time, and ids taken in commit order: a change is invisible to
            # the read exactly when its id is past the highest id given out before it.
            cursor.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = ?", (self.state.changelog.name,)
            )
            found = cursor.fetchone()
            seen = int(found[0]) if found else 0
            return (lambda change: int(change.position) > seen), None
        cursor.execute("SELECT pg_current_snapshot()::text")
        snapshot = Snapshot.parse(cursor.fetchone()[0])
        if self.mode == "logical":
            return (
                lambda change: change.txid is None or not snapshot.sees_xid32(change.txid),
                snapshot,
            )
        return (lambda change: change.txid is None or not snapshot.sees(change.txid)), snapshot

    def _write_watermark(self, pending: Pending) -> None:
        with self.engine.begin() as connection:
            raw: Any = connection.connection.driver_connection
            cursor = raw.cursor()
            if self.mode == "logical":
                cursor.execute(
                    "SELECT pg_logical_emit_message(true, %s, %s)",
                    (WATERMARK_PREFIX, pending.token),
                )
                return
            log_table = self.state.qualified(self.state.changelog)
            payload = orjson.dumps({"token": pending.token}).decode()
            if self.sqlite:
                cursor.execute(
                    f"INSERT INTO {log_table} (table_name, op, after) VALUES (?, ?, ?)",
                    (pending.run.table, WATERMARK_OP, payload),
                )
                pending.position = f"{cursor.lastrowid:020d}"
                pending.ready = True
                return
            cursor.execute(
                f"INSERT INTO {log_table} (table_name, op, after) "
                "VALUES (%s, %s, %s::json) RETURNING id, txid",
                (pending.run.table, WATERMARK_OP, payload),
            )
            watermark_id, own = cursor.fetchone()
        # A transaction that took a lower id wrote its legacy row (and got its xid) before
        # that, so before the watermark got its xid: it has a lower xid.
        pending.position = f"{watermark_id:020d}"
        pending.writers_below = own

    def _check_ready(self, pending: Pending) -> None:
        """Change log on PostgreSQL: ready once no transaction older than the watermark's is
        running, that is once the oldest running xid is past it."""
        if self.mode == "logical" or self.sqlite:
            return
        with self.engine.connect() as connection:
            oldest = connection.execute(
                text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
            ).scalar_one()
            connection.rollback()
        pending.ready = int(oldest) > pending.writers_below

    # -- weaving a read batch -----------------------------------------------------------

    def weave(self, batch: Batch) -> Sequence[Change]:
        """The batch's changes, with the pending chunk's rows inserted where they belong."""
        changes = batch.changes
        if self.mode == "logical" and self.runs:  # no work on the hot path without backfills
            self._remember_xids(changes)
        pending = self.pending
        if pending is None or pending.emitted >= 0:
            return changes
        at = self._emission_point(pending, batch)
        observed = changes if at is None else changes[:at]
        self._observe(pending, observed)
        if at is None:
            return changes
        return [*changes[:at], *self._rows(pending), *changes[at:]]

    def _emission_point(self, pending: Pending, batch: Batch) -> int | None:
        if self.mode == "logical":
            for mark in batch.marks:
                if mark.token == pending.token:
                    pending.position = mark.position
                    return mark.index
            return None
        if not pending.ready:
            return None
        past = pending.position
        for index, change in enumerate(batch.changes):
            if change.position > past:
                return index
        return len(batch.changes) if batch.drained else None

    def _observe(self, pending: Pending, changes: Sequence[Change]) -> None:
        ref = pending.info.ref
        key = pending.info.key
        invisible = pending.invisible
        dropped = pending.dropped
        for change in changes:
            if change.table != ref or not invisible(change):
                continue
            if change.op == "truncate":
                pending.truncated = True
                continue
            for image in (change.before, change.after):
                if image is not None:
                    dropped.add(key_of(image, key))

    def _rows(self, pending: Pending) -> list[Change]:
        out: list[Change] = []
        if not pending.truncated:
            ref, prefix, moment = pending.info.ref, pending.position + ".", pending.read_at
            identity = f"backfill:{pending.run.id}:"
            dropped = pending.dropped
            for row, key in zip(pending.rows, pending.keys, strict=True):
                if key in dropped:
                    continue
                out.append(
                    Change(
                        ref,
                        "read",
                        None,
                        row,
                        f"{prefix}{len(out):08d}",
                        None,
                        moment,
                        "legacy",
                        (),
                        identity + key.decode(),
                    )
                )
        pending.emitted = len(out)
        return out

    def _remember_xids(self, changes: Sequence[Change]) -> None:
        recent = self._recent
        last = self._last_xid
        for change in changes:
            xid = change.txid
            if xid != last and xid is not None:
                last = xid
                recent[xid] = None
                if len(recent) > _RECENT_XIDS:
                    del recent[next(iter(recent))]
        self._last_xid = last

    # -- after the bus accepted ---------------------------------------------------------

    def acknowledged(self) -> None:
        """The batch that carried the pending chunk is acknowledged: record its progress
        (stored first, so that a retry after a failed store records it once)."""
        pending = self.pending
        if pending is None or pending.emitted < 0:
            return
        run = pending.run
        progress = replace(
            run,
            last_key=pending.last_key,
            rows_done=run.rows_done + len(pending.rows),
            chunks_done=run.chunks_done + 1,
        )
        self._store_progress(progress, done=not pending.full)
        run.last_key, run.rows_done, run.chunks_done = (
            progress.last_key,
            progress.rows_done,
            progress.chunks_done,
        )
        self.rows_published += pending.emitted
        self.pending = None
        if run.rate:
            self._not_before[run.id] = time.monotonic() + len(pending.rows) / run.rate

    def _store_progress(self, run: Run, done: bool) -> None:
        table = self.state.backfills
        now = _now(self.sqlite)
        values: dict[str, Any] = {
            "last_key": None if run.last_key is None else orjson.dumps(run.last_key).decode(),
            "rows_done": run.rows_done,
            "chunks_done": run.chunks_done,
            "updated_at": now,
        }
        if done:
            values.update(status="done", finished_at=now)
        with self.engine.begin() as connection:
            connection.execute(
                table.update()
                .where(table.c.id == run.id, table.c.status == "running")
                .values(**values)
            )
        if done:
            log.info(
                "backfill #%d of %s done: %d rows in %d chunks",
                run.id,
                run.table,
                run.rows_done,
                run.chunks_done,
            )
            self.runs = [r for r in self.runs if r.id != run.id]

    def _fail(self, run: Run, reason: str) -> None:
        log.error("backfill #%d of %s stopped: %s", run.id, run.table, reason)
        table = self.state.backfills
        with self.engine.begin() as connection:
            connection.execute(
                table.update()
                .where(table.c.id == run.id)
                .values(
                    status="failed", updated_at=_now(self.sqlite), finished_at=_now(self.sqlite)
                )
            )
        self.runs = [r for r in self.runs if r.id != run.id]

    def forget_pending(self) -> None:
        """The batch carrying the chunk was not acknowledged (stop): read it again later."""
        self.pending = None


def _now(sqlite: bool) -> Any:
    moment = datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if sqlite else moment


def run_of(row: Any) -> Run:
    last = row["last_key"]
    return Run(
        row["id"],
        row["table_name"],
        row["where_clause"],
        row["chunk_size"],
        row["rate"],
        None if last is None else orjson.loads(last),
        row["rows_done"],
        row["chunks_done"],
        row["rows_total"],
        row["status"],
        row["started_at"],
        row["updated_at"],
    )


# -- the operator's side: start, resume, list ------------------------------------------


def start(
    engine: Engine,
    state: StateTables,
    info: TableInfo,
    where: str | None,
    chunk_size: int,
    rate: float | None,
) -> tuple[Run, bool]:
    """A running backfill of the table, resumed if one with the same ``where`` exists, else
    a new one; and whether it was resumed."""
    table = state.backfills
    name = info.ref.qualified
    sqlite = engine.dialect.name == "sqlite"
    with engine.begin() as connection:
        row = (
            connection.execute(
                select(table).where(table.c.table_name == name, table.c.status == "running")
            )
            .mappings()
            .first()
        )
        if row is not None:
            run = run_of(row)
            if (run.where or None) != (where or None):
                raise CdcError(
                    f"backfill #{run.id} of {name} is running with --where {run.where!r}; let it "
                    f"finish, or cancel it first (cdc backfill --cancel {name})"
                )
            if run.chunk_size != chunk_size or run.rate != rate:
                connection.execute(
                    table.update()
                    .where(table.c.id == run.id)
                    .values(chunk_size=chunk_size, rate=rate)
                )
                run.chunk_size, run.rate = chunk_size, rate
            return run, True
        reader = TableReader(connection, info, where)
        try:
            total = reader.count(connection)
        except Exception as exc:
            raise CdcError(
                f"cannot read {name} with --where {where!r}: {str(exc).splitlines()[0]}"
            ) from None
        now = _now(sqlite)
        new_id = connection.execute(
            table.insert()
            .values(
                table_name=name,
                where_clause=where or None,
                chunk_size=chunk_size,
                rate=rate,
                status="running",
                last_key=None,
                rows_total=total,
                rows_done=0,
                chunks_done=0,
                started_at=now,
                updated_at=now,
            )
            .returning(table.c.id)
        ).scalar_one()
    return Run(new_id, name, where or None, chunk_size, rate, None, 0, 0, total), False


def cancel(engine: Engine, state: StateTables, name: str) -> int:
    table = state.backfills
    with engine.begin() as connection:
        result = connection.execute(
            table.update()
            .where(table.c.table_name == name, table.c.status == "running")
            .values(status="cancelled", updated_at=_now(engine.dialect.name == "sqlite"))
        )
    return int(result.rowcount)


def runs(
    engine: Engine, state: StateTables, ids: Sequence[int] | None = None, limit: int = 50
) -> list[Run]:
    table = state.backfills
    query = select(table).order_by(table.c.id.desc()).limit(limit)
    if ids is not None:
        query = select(table).where(table.c.id.in_(list(ids))).order_by(table.c.id)
    with engine.connect() as connection:
        return [run_of(row) for row in connection.execute(query).mappings()]


def running_count(engine: Engine, state: StateTables) -> int:
    table = state.backfills
    with engine.connect() as connection:
        return int(
            connection.execute(select(func.count()).where(table.c.status == "running")).scalar()
            or 0
        )

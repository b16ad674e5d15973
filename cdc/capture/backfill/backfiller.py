"""The worker's side of backfills: between stream batches it starts the next chunk (snapshot,
page, watermark), weaves the chunk into the batch that carries its watermark, and records the
run's progress once the bus accepted it.

One chunk is in flight at a time, and runs take turns (rate-limited ones wait theirs). Why
the snapshot, the watermark and the waits are there is the package's docstring
(``cdc.capture.backfill``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine

from cdc.bus.events import Change
from cdc.capture.backfill import runs
from cdc.capture.backfill.chunks import Pending
from cdc.capture.backfill.pages import Mode, TableReader, key_of
from cdc.capture.backfill.runs import Run
from cdc.capture.catalog import TableInfo
from cdc.capture.dialects import capture_of
from cdc.capture.sources import WATERMARK_OP, WATERMARK_PREFIX, Batch
from cdc.core.dialects import dialect_of
from cdc.core.errors import is_transient_db_error
from cdc.core.state import StateTables

log = logging.getLogger(__name__)

# logical mode: xids of the transactions streamed last (the race they guard against lasts
# microseconds, so the last thousand are plenty)
_RECENT_XIDS = 1_000
# How often the running backfills are read: a new one starts within about this long (the
# worker also looks while it waits on an empty change log, ``has_work``).
REFRESH_SECONDS = 0.5


class Backfiller:
    """The worker's side of backfills: reads chunks, weaves them into batches, records progress."""

    def __init__(
        self, engine: Engine, state: StateTables, mode: Mode, table_info: Callable[[str], TableInfo]
    ) -> None:
        self.engine = engine
        self.state = state
        self.mode = mode
        self.capture = capture_of(dialect_of(engine))
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
        # logical: the last stream batch that had changes, for the xids a first run needs
        self._last_changes: Sequence[Change] = ()

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
        self._refresh_if_due(now)
        runnable = [r for r in self.runs if self._not_before.get(r.id, 0.0) <= now]
        if not runnable:
            return
        self._turn = (self._turn + 1) % len(runnable)
        self._start(runnable[self._turn])

    def has_work(self) -> bool:
        """``busy``, after reading the running backfills if that is due: the worker asks while
        it waits on an empty change log, so that a new run does not wait out the poll."""
        if self.pending is None:
            self._refresh_if_due(time.monotonic())
        return self.busy

    def _refresh_if_due(self, now: float) -> None:
        if now - self._refreshed_at < REFRESH_SECONDS:
            return
        idle = not self.runs
        self._refresh()
        self._refreshed_at = now
        if idle and self.runs and self.mode == "logical":
            # Streamed xids are remembered only while backfills run (the hot path does no
            # backfill work otherwise); the transactions streamed just before the first chunk
            # are those of the last batch that had changes.
            self._remember_xids(self._last_changes)

    def _refresh(self) -> None:
        # A run already known keeps its object: it carries the progress counted here.
        known = {r.id: r for r in self.runs}
        self.runs = [known.get(run.id) or run for run in runs.running(self.engine, self.state)]

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
            invisible, snapshot = self.capture.take_snapshot(
                raw, self.mode == "logical", self.state.changelog.name
            )
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
            watermark_id, pending.writers_below = self.capture.write_watermark(
                cursor, log_table, pending.run.table, WATERMARK_OP, payload
            )
        pending.position = f"{watermark_id:020d}"

    def _check_ready(self, pending: Pending) -> None:
        """Change log: ready once every writer that may still commit an id below the
        watermark's has ended (on PostgreSQL, once the oldest running xid is past the
        watermark's)."""
        if self.mode == "logical":
            return
        with self.engine.connect() as connection:
            pending.ready = self.capture.writers_done(connection, pending.writers_below)
            connection.rollback()

    # -- weaving a read batch -----------------------------------------------------------

    def weave(self, batch: Batch) -> Sequence[Change]:
        """The batch's changes, with the pending chunk's rows inserted where they belong."""
        changes = batch.changes
        if self.mode == "logical":
            if self.runs:
                self._remember_xids(changes)
            elif changes:  # no work on the hot path without backfills: kept, not read
                self._last_changes = changes
        pending = self.pending
        if pending is None or pending.emitted >= 0:
            return changes
        at = pending.emission_point(batch, self.mode)
        pending.observe(changes if at is None else changes[:at])
        if at is None:
            return changes
        return [*changes[:at], *pending.events(), *changes[at:]]

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
        runs.record_progress(self.engine, self.state, run, done)
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
        runs.record_failure(self.engine, self.state, run)
        self.runs = [r for r in self.runs if r.id != run.id]

    def forget_pending(self) -> None:
        """The batch carrying the chunk was not acknowledged (stop): read it again later."""
        self.pending = None

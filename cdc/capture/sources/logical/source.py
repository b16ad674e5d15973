"""``LogicalSource``: reads Batches from the replication stream and confirms what the bus
accepted.

What may be confirmed to PostgreSQL (the flush LSN, after which the slot's WAL can go) is only
ever a position whose changes the bus accepted: a batch carries the assembler's safe LSN at its
read, and acknowledging the batch makes that position confirmable. Confirmations go out with
the next standby status update, at most every ``CONFIRM_SECONDS``; the checkpoint row (for
``cdc status`` only: the slot is where streaming resumes) at most every ``CHECKPOINT_SECONDS``.
A heartbeat message lets the slot advance while the tracked tables are quiet. Only the tables
of CDC_TABLES are published (``tracked``): the assembly drops the others' changes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from sqlalchemy import Connection, Engine, text

from cdc.bus.events import Change
from cdc.bus.publishers import Rejection
from cdc.capture import checkpoints, deadletters
from cdc.capture.catalog import Catalog, TableInfo
from cdc.capture.history import SchemaHistory, Version
from cdc.capture.pgoutput import Relation, format_lsn
from cdc.capture.slots import check_slot, slot_status
from cdc.capture.sources import Backlog, Batch, Mark, Unrenderable
from cdc.capture.sources.logical.assembly import TransactionAssembler
from cdc.capture.sources.logical.stream import (
    KEEPALIVE,
    XLOG_DATA,
    XLOG_HEADER,
    ReplicationStream,
    keepalive,
)
from cdc.core.state import StateTables
from cdc.core.tables import TableRef

log = logging.getLogger(__name__)

STREAM = "logical"
HEARTBEAT_PREFIX = "cdc.heartbeat"
FEEDBACK_SECONDS = 10.0
CHECKPOINT_SECONDS = 1.0
# Confirmations go out at most this often (a message each); later is always safe: it only
# means more to re-stream after a crash.
CONFIRM_SECONDS = 0.1
# A read waits at most this long for a first change, whatever CDC_POLL_INTERVAL says: between
# reads the worker looks for new backfills (which should start within a second) and its lease.
MAX_WAIT_SECONDS = 0.5


@dataclass
class LogicalSource:
    engine: Engine
    state: StateTables
    conninfo: str
    slot: str
    publication: str
    default_schema: str
    poll_interval: float = 0.2
    heartbeat_seconds: float = 10.0
    # CDC_TABLES, qualified: the changes of other tables are dropped (None: none are)
    tracked: Collection[str] | None = None
    linger: float = 0.002
    waits_for_changes: bool = True
    _stream: ReplicationStream | None = None
    _flushed_lsn: int = 0  # confirmed to PostgreSQL
    _to_confirm: int = 0  # acknowledged, to be confirmed with the next feedback
    _last_feedback: float = 0.0
    _last_message: float = field(default_factory=time.monotonic)
    _heartbeat_ok: bool = True
    _connection: Connection | None = None  # for state writes (checkpoint, dead letters)
    _unrecorded: int = 0  # acknowledged changes not yet counted in the checkpoint
    _last_position: str = ""
    _recorded_at: float = 0.0

    # -- Source protocol ----------------------------------------------------------------

    def __post_init__(self) -> None:
        self.catalog = Catalog(self.engine, self.default_schema)
        self.history = SchemaHistory(self.engine, self.state, self.default_schema)
        # Versions met in the stream, recorded when their batch is acknowledged.
        self._unstored: list[tuple[str, Version]] = []
        self.assembly = TransactionAssembler(self.catalog.forget, self, self.tracked)

    def table(self, name: str) -> TableInfo:
        """The table as it is now: its newest schema version (the catalog, without one)."""
        versions = self.history.versions(name)
        return versions[-1].info if versions else self.catalog.table(name)

    def read(self, limit: int) -> Batch:
        stream = self._connected()
        assembly = self.assembly
        changes: list[Change] = []
        marks: list[Mark] = []
        assembly.marks = marks
        unrenderable: list[Unrenderable] = []
        assembly.unrenderable = unrenderable
        ignored = assembly.ignored
        deadline = time.monotonic() + min(self.poll_interval, MAX_WAIT_SECONDS)
        linger_until = 0.0
        on_data, ready_frame, monotonic = assembly.on_data, stream.ready_frame, time.monotonic
        try:
            while len(changes) < limit:
                frame = ready_frame()
                if frame is None:
                    # Once something is in hand, wait at most ``linger`` for more: a batch of
                    # one change costs nearly what a batch of hundreds does, a few ms of latency
                    # less. A backfill's watermark counts: its chunk is waiting for it.
                    if changes or marks:
                        if not linger_until:
                            linger_until = monotonic() + self.linger
                        wait = max(0.0, linger_until - monotonic())
                    else:
                        wait = max(0.0, deadline - monotonic())
                    frame = stream.frame(wait)
                    if frame is None:
                        break
                kind = frame[0]
                if kind == XLOG_DATA:
                    self._last_message = monotonic()
                    on_data(bytes(frame[XLOG_HEADER:]), changes)
                elif kind == KEEPALIVE:
                    self._on_keepalive(frame)
            self._keep_alive(stream)
        except Exception:
            self._disconnect()
            raise
        safe_lsn = assembly.safe_lsn
        if not changes and safe_lsn > self._flushed_lsn:
            # Nothing in flight: everything up to the safe LSN is acknowledged already.
            self._confirm(safe_lsn)
        last = changes[-1].position if changes else ""
        if unrenderable:
            last = max(last, *(u.change.position for u in unrenderable))
        return Batch(
            changes,
            (),
            last,
            safe_lsn,
            marks=marks,
            unrenderable=unrenderable,
            ignored=assembly.ignored - ignored,
        )

    def ack(self, batch: Batch, rejections: Sequence[Rejection]) -> None:
        if batch.flush_lsn < self._flushed_lsn:
            raise RuntimeError(
                f"acknowledgement behind the confirmed position: {format_lsn(batch.flush_lsn)} "
                f"< {format_lsn(self._flushed_lsn)}"
            )
        self._unrecorded += len(batch.changes)
        if batch.last_position:
            self._last_position = batch.last_position
        now = time.monotonic()
        if (
            rejections
            or self._unstored
            or (self._unrecorded and now - self._recorded_at >= CHECKPOINT_SECONDS)
        ):
            self._record(rejections)
            self._recorded_at = now
        if batch.flush_lsn > self._flushed_lsn:
            self._to_confirm = batch.flush_lsn
            if now - self._last_feedback >= CONFIRM_SECONDS:
                self._confirm(batch.flush_lsn)

    def backlog(self) -> Backlog:
        status = slot_status(self.engine, self.slot)
        keep = status.wal_keep_size_bytes
        return Backlog(
            slot=self.slot,
            retained_bytes=status.retained_bytes or 0,
            unconfirmed_bytes=status.lag_bytes or 0,
            wal_keep_size_bytes=-1 if keep is None else keep,
        )

    def close(self) -> None:
        if self._to_confirm > self._flushed_lsn:
            with contextlib.suppress(Exception):
                self._confirm(self._to_confirm)
        if self._unrecorded:
            with contextlib.suppress(Exception):
                self._record(())
        self._disconnect()
        self._drop_state_connection()
        self.engine.dispose()

    # -- state writes ---------------------------------------------------------------------

    def _record(self, rejections: Sequence[Rejection]) -> None:
        """Dead letters (durably: the slot moves past their events next) and the checkpoint,
        which is for ``cdc status`` only (the slot is where streaming resumes): written at most
        once a second, without waiting for its commit to reach the disk."""
        try:
            connection = self._state_connection()
            with connection.begin():
                if rejections:
                    deadletters.store(connection, self.state, rejections)
                elif not self._unstored:
                    connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
                for name, version in self._unstored:
                    self.history.store(connection, name, version)
                checkpoints.store(
                    connection, self.state, STREAM, self._last_position, self._unrecorded
                )
        except Exception:
            self._drop_state_connection()
            raise
        self._unrecorded = 0
        self._unstored.clear()

    # -- schema versions ------------------------------------------------------------------

    def track(
        self, ref: TableRef, message: Relation, position: str
    ) -> tuple[Version, Version | None]:
        """``SchemaTracker.track``: the version in effect at ``position`` compared with the
        shape the Relation message describes."""
        name = ref.qualified
        shape = self._describe(message)
        current = self.history.in_effect(name, position)
        if current is not None and current.shape == shape:
            return current, None
        # A table without history starts at version 1, with no event: nothing changed.
        number, since = (1, "") if current is None else (current.number + 1, position)
        version = self.history.add(name, number, since, shape)
        self._unstored.append((name, version))
        return version, current

    def _describe(self, message: Relation) -> dict[str, object]:
        """The shape a Relation message gives, in the history's form: each column's type by
        ``format_type`` (a domain by its base type), nullability from the catalog, the key
        from the replica identity (the primary key under REPLICA IDENTITY FULL or NOTHING)."""
        columns = message.columns
        with self.engine.connect() as connection:
            described = connection.execute(
                text(
                    "SELECT c.name, format_type("
                    "  CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END,"
                    "  CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE c.typmod END),"
                    " coalesce(NOT a.attnotnull, true) "
                    "FROM unnest(CAST(:names AS text[]), CAST(:types AS oid[]),"
                    "            CAST(:mods AS int[])) WITH ORDINALITY AS c(name, typ, typmod, n) "
                    "JOIN pg_type t ON t.oid = c.typ "
                    "LEFT JOIN pg_attribute a ON a.attrelid = :rel AND a.attname = c.name "
                    " AND NOT a.attisdropped "
                    "ORDER BY c.n"
                ),
                {
                    "names": [c.name for c in columns],
                    "types": [c.type_oid for c in columns],
                    "mods": [c.type_modifier for c in columns],
                    "rel": message.oid,
                },
            ).all()
            if message.replica_identity in ("d", "i"):
                key = [c.name for c in columns if c.is_key]
            else:
                found = connection.execute(
                    text(f'SELECT "{self.state.schema}".table_shape(CAST(:rel AS oid))'),
                    {"rel": message.oid},
                ).scalar()
                key = orjson.loads(found)["key"] if found else []
        return {
            "columns": [
                {"name": name, "type": kind, "nullable": nullable}
                for name, kind, nullable in described
            ],
            "key": key,
        }

    def _state_connection(self) -> Connection:
        connection = self._connection
        if connection is None or connection.closed or connection.invalidated:
            connection = self._connection = self.engine.connect()
        return connection

    def _drop_state_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.invalidate()
                self._connection.close()
            self._connection = None

    # -- the stream -----------------------------------------------------------------------

    def _connected(self) -> ReplicationStream:
        if self._stream is not None:
            return self._stream
        confirmed = check_slot(self.engine, self.slot)
        stream = ReplicationStream(self.conninfo)
        try:
            # LSN 0: resume at the slot's confirmed flush position.
            stream.start(self.slot, self.publication, 0)
        except Exception:
            stream.close()
            raise
        self.assembly.restart(confirmed)
        # What is re-streamed is compared with the recorded versions only: one met before
        # the break was not published, so it must be met (and published) again.
        self.history = SchemaHistory(self.engine, self.state, self.default_schema)
        self._unstored.clear()
        self._flushed_lsn = self._to_confirm = confirmed
        self._stream = stream
        self._last_feedback = time.monotonic()
        log.info("streaming from slot %s, publication %s", self.slot, self.publication)
        return stream

    def _disconnect(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):  # usually broken already
                self._stream.close()
            self._stream = None
        self.assembly.abandon()

    def _on_keepalive(self, frame: memoryview) -> None:
        wal_end, reply = keepalive(frame)
        self.assembly.on_keepalive(wal_end)
        if reply and self._stream is not None:
            self._stream.feedback(self._flushed_lsn)
            self._last_feedback = time.monotonic()

    def _confirm(self, lsn: int) -> None:
        if self._stream is None:
            return  # the next connection resumes from the slot's own position
        try:
            self._stream.feedback(lsn)
        except Exception:
            # The stream broke: the next read reconnects at the slot's confirmed position and
            # whatever was not confirmed comes again, with the same ids.
            self._disconnect()
            raise
        self._flushed_lsn = lsn
        self._last_feedback = time.monotonic()

    def _keep_alive(self, stream: ReplicationStream) -> None:
        now = time.monotonic()
        if self._to_confirm > self._flushed_lsn and now - self._last_feedback >= CONFIRM_SECONDS:
            self._confirm(self._to_confirm)
        elif now - self._last_feedback >= FEEDBACK_SECONDS:
            stream.feedback(self._flushed_lsn)
            self._last_feedback = now
        if self._heartbeat_ok and now - self._last_message >= self.heartbeat_seconds:
            self._last_message = now
            self._heartbeat()

    def _heartbeat(self) -> None:
        """A non-transactional logical message: when the tracked tables are quiet and the rest
        of the database is busy, it reaches us between transactions so the slot can advance."""
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    text("SELECT pg_logical_emit_message(false, :prefix, :now)"),
                    {"prefix": HEARTBEAT_PREFIX, "now": datetime.now(UTC).isoformat()},
                )
        except Exception as exc:
            self._heartbeat_ok = False
            log.warning("heartbeat disabled: pg_logical_emit_message failed (%s)", exc)

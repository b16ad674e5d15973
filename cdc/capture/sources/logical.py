"""The ``logical`` source: PostgreSQL's own change stream (logical decoding, ``pgoutput``).

psycopg 3 has no replication API, but its low-level connection speaks the protocol: a
``replication=database`` connection, ``START_REPLICATION ... LOGICAL``, then CopyBoth frames
read with ``get_copy_data`` and standby status updates written with ``put_copy_data``.

What may be confirmed to PostgreSQL (the flush LSN, after which the slot's WAL can go) is
only ever a position whose changes the bus accepted: the end of the last transaction whose
every change sits in an acknowledged batch, or a keepalive's WAL end seen between transactions.
A large transaction is published in batches as it streams; PostgreSQL re-sends it whole after
a crash, and its events get the same ids (commit LSN and index within the transaction).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import select
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import pq
from sqlalchemy import Connection, Engine, text

from cdc.bus.events import Change, Op, Row
from cdc.bus.publishers import Rejection
from cdc.capture import checkpoints, deadletters
from cdc.capture.catalog import Catalog, TableInfo
from cdc.capture.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Message,
    Origin,
    PgOutputMessage,
    Relation,
    Truncate,
    TupleData,
    Update,
    decode,
    format_lsn,
)
from cdc.capture.pgtypes import TextConvert, text_converter
from cdc.capture.sources import WATERMARK_PREFIX, Batch, Mark
from cdc.core.errors import PermanentError
from cdc.core.origin import ORIGIN_MESSAGE_PREFIX
from cdc.core.state import StateTables
from cdc.core.tables import TableRef, quote_ident

log = logging.getLogger(__name__)

STREAM = "logical"
HEARTBEAT_PREFIX = "cdc.heartbeat"
FEEDBACK_SECONDS = 10.0
CHECKPOINT_SECONDS = 1.0
# Confirmations go out at most this often (a message each); later is always safe: it only
# means more to re-stream after a crash.
CONFIRM_SECONDS = 0.1

_XLOG = struct.Struct("!QQq")  # after 'w': WAL start, WAL end, send time
_XLOG_HEADER = 1 + _XLOG.size
_KEEPALIVE = struct.Struct("!QqB")  # after 'k': WAL end, send time, reply requested
_FEEDBACK = struct.Struct("!cQQQqB")  # 'r', written, flushed, applied, clock, reply requested
_PG_EPOCH_MICROS = 946_684_800_000_000


def _pg_now() -> int:
    return int(time.time() * 1_000_000) - _PG_EPOCH_MICROS


class ReplicationStream:
    """One ``replication=database`` connection in CopyBoth mode."""

    def __init__(self, conninfo: str) -> None:
        self.connection = psycopg.connect(conninfo, replication="database", autocommit=True)
        self.pg = self.connection.pgconn

    def start(self, slot: str, publication: str, start_lsn: int = 0) -> None:
        command = (
            f"START_REPLICATION SLOT {quote_ident(slot)} LOGICAL {format_lsn(start_lsn)} "
            f"(proto_version '1', publication_names '{quote_ident(publication)}', "
            "messages 'true')"
        )
        self.pg.send_query(command.encode())
        while True:
            self.pg.consume_input()
            if not self.pg.is_busy():
                break
            select.select([self.pg.socket], [], [], 1.0)
        result = self.pg.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            message = (result.error_message if result else b"").decode(errors="replace").strip()
            if "invalidated" in message or "can no longer get changes" in message:
                raise PermanentError(slot_lost_message(slot))
            raise psycopg.OperationalError(f"START_REPLICATION failed: {message}")

    def ready_frame(self) -> memoryview | None:
        """A CopyData frame libpq already holds, or None: no waiting, no system call."""
        size, data = self.pg.get_copy_data(1)
        return data if size > 0 else None

    def frame(self, timeout: float) -> memoryview | None:
        """The next CopyData frame, or None when none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        consumed = False
        while True:
            size, data = self.pg.get_copy_data(1)
            if size > 0:
                return data
            if size == -1:
                result = self.pg.get_result()
                message = (result.error_message if result else b"").decode(errors="replace")
                raise psycopg.OperationalError(f"replication stream ended: {message.strip()}")
            if not consumed:
                # Take in what the socket already holds (this does not block) before deciding
                # nothing came: without it a batch ends at libpq's buffer, a tenth of its size.
                self.pg.consume_input()
                consumed = True
                continue
            consumed = False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([self.pg.socket], [], [], remaining)
            if not readable:
                return None
            self.pg.consume_input()

    def feedback(self, flushed_lsn: int) -> None:
        self.pg.put_copy_data(
            _FEEDBACK.pack(b"r", flushed_lsn, flushed_lsn, flushed_lsn, _pg_now(), 0)
        )
        self.pg.flush()

    def close(self) -> None:
        self.connection.close()


def slot_lost_message(slot: str) -> str:
    return (
        f"replication slot {slot!r} was invalidated by PostgreSQL (wal_status = lost): WAL it "
        "still needed was removed (max_slot_wal_keep_size), so changes were lost before they "
        "could be read. Recreate the slot with `cdc setup --drop` and `cdc setup`, then "
        "backfill the tracked tables to repair the gap."
    )


@dataclass
class _Relation:
    ref: TableRef
    names: tuple[str, ...]
    converters: tuple[TextConvert, ...]
    key_flags: tuple[bool, ...]
    columns: tuple[tuple[str, TextConvert], ...] = ()  # (name, converter) pairs, for _new_row

    def __post_init__(self) -> None:
        self.columns = tuple(zip(self.names, self.converters, strict=True))


@dataclass
class _Transaction:
    commit_lsn: int
    xid: int
    committed_at: datetime
    origin: str = "legacy"
    index: int = 0
    position_prefix: str = ""
    identity_prefix: str = ""

    def __post_init__(self) -> None:
        self.position_prefix = f"{self.commit_lsn:016X}."
        self.identity_prefix = f"logical:{self.commit_lsn}:"


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
    linger: float = 0.002
    waits_for_changes: bool = True
    _stream: ReplicationStream | None = None
    _relations: dict[int, _Relation] = field(default_factory=dict)
    _txn: _Transaction | None = None
    _safe_lsn: int = 0  # may be confirmed once what was read so far is acknowledged
    _flushed_lsn: int = 0  # confirmed to PostgreSQL
    _to_confirm: int = 0  # acknowledged, to be confirmed with the next feedback
    _last_feedback: float = 0.0
    _last_message: float = field(default_factory=time.monotonic)
    _heartbeat_ok: bool = True
    _connection: Connection | None = None  # for state writes (checkpoint, dead letters)
    _unrecorded: int = 0  # acknowledged changes not yet counted in the checkpoint
    _last_position: str = ""
    _recorded_at: float = 0.0
    _marks: list[Mark] = field(default_factory=list)  # backfill watermarks of this read

    # -- Source protocol ----------------------------------------------------------------

    def __post_init__(self) -> None:
        self.catalog = Catalog(self.engine, self.default_schema)

    def table(self, name: str) -> TableInfo:
        return self.catalog.table(name)

    def read(self, limit: int) -> Batch:
        stream = self._connected()
        changes: list[Change] = []
        self._marks = []
        deadline = time.monotonic() + self.poll_interval
        linger_until = 0.0
        on_frame, ready_frame = self._on_frame, stream.ready_frame
        try:
            while len(changes) < limit:
                frame = ready_frame()
                if frame is None:
                    # Once something is in hand, wait at most ``linger`` for more: a batch of
                    # one change costs nearly what a batch of hundreds does, a few ms of latency
                    # less.
                    if changes:
                        if not linger_until:
                            linger_until = time.monotonic() + self.linger
                        wait = max(0.0, linger_until - time.monotonic())
                    else:
                        wait = max(0.0, deadline - time.monotonic())
                    frame = stream.frame(wait)
                    if frame is None:
                        break
                on_frame(frame, changes)
            self._keep_alive(stream)
        except Exception:
            self._disconnect()
            raise
        if not changes and self._safe_lsn > self._flushed_lsn:
            # Nothing in flight: everything up to the safe LSN is acknowledged already.
            self._confirm(self._safe_lsn)
        last = changes[-1].position if changes else ""
        return Batch(changes, (), last, self._safe_lsn, marks=self._marks)

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
        if rejections or (self._unrecorded and now - self._recorded_at >= CHECKPOINT_SECONDS):
            self._record(rejections)
            self._recorded_at = now
        if batch.flush_lsn > self._flushed_lsn:
            self._to_confirm = batch.flush_lsn
            if now - self._last_feedback >= CONFIRM_SECONDS:
                self._confirm(batch.flush_lsn)

    def _record(self, rejections: Sequence[Rejection]) -> None:
        """Dead letters (durably: the slot moves past their events next) and the checkpoint,
        which is for ``cdc status`` only (the slot is where streaming resumes): written at most
        once a second, without waiting for its commit to reach the disk."""
        try:
            connection = self._state_connection()
            with connection.begin():
                if rejections:
                    deadletters.store(connection, self.state, rejections)
                else:
                    connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
                checkpoints.store(
                    connection, self.state, STREAM, self._last_position, self._unrecorded
                )
        except Exception:
            self._drop_state_connection()
            raise
        self._unrecorded = 0

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

    # -- connection ---------------------------------------------------------------------

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
        # PostgreSQL re-sends Relation messages and restarts from the confirmed position: what
        # was read and not acknowledged comes again, so nothing beyond it counts as safe.
        self._relations.clear()
        self._txn = None
        self._flushed_lsn = self._safe_lsn = self._to_confirm = confirmed
        self._stream = stream
        self._last_feedback = time.monotonic()
        log.info("streaming from slot %s, publication %s", self.slot, self.publication)
        return stream

    def _disconnect(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):  # usually broken already
                self._stream.close()
            self._stream = None
        self._txn = None

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

    # -- decoding -------------------------------------------------------------------------

    def _on_frame(self, frame: memoryview, changes: list[Change]) -> None:
        kind = frame[0]
        if kind == 0x77:  # 'w' XLogData
            self._last_message = time.monotonic()
            data = bytes(frame[_XLOG_HEADER:])
            txn = self._txn
            if txn is not None and data[:1] in _NEW_TUPLE_ONLY:
                change = self._fast_change(txn, data)
                if change is not None:
                    changes.append(change)
                    return
            self._on_message(decode(data), changes)
        elif kind == 0x6B:  # 'k' keepalive
            wal_end, _, reply = _KEEPALIVE.unpack_from(frame, 1)
            if self._txn is None:
                # Between transactions, everything before the WAL end has been received.
                self._safe_lsn = max(self._safe_lsn, wal_end)
            if reply and self._stream is not None:
                self._stream.feedback(self._flushed_lsn)
                self._last_feedback = time.monotonic()

    def _on_message(self, message: PgOutputMessage, changes: list[Change]) -> None:
        txn = self._txn
        if isinstance(message, Insert | Update | Delete):
            assert txn is not None, "row change outside a transaction"
            changes.append(self._change(txn, message))
        elif isinstance(message, Begin):
            self._txn = _Transaction(message.final_lsn, message.xid, message.commit_time)
        elif isinstance(message, Commit):
            self._txn = None
            self._safe_lsn = max(self._safe_lsn, message.end_lsn)
        elif isinstance(message, Relation):
            self._relations[message.oid] = self._relation(message)
        elif isinstance(message, Truncate):
            assert txn is not None, "truncate outside a transaction"
            for oid in message.relation_oids:
                changes.append(
                    self._make(txn, self._relations[oid].ref, "truncate", None, None, ())
                )
        elif isinstance(message, Message):
            if (
                message.transactional
                and message.prefix == ORIGIN_MESSAGE_PREFIX
                and txn is not None
            ):
                txn.origin = message.content.decode() or "legacy"
            elif message.transactional and message.prefix == WATERMARK_PREFIX and txn is not None:
                # A backfill's chunk goes right here: positions <commit LSN>.<index>
                self._marks.append(
                    Mark(len(changes), message.content.decode(), txn.position_prefix[:-1])
                )
            elif not message.transactional and txn is None:
                self._safe_lsn = max(self._safe_lsn, message.lsn)
        elif isinstance(message, Origin) and txn is not None:
            txn.origin = message.name

    def _relation(self, message: Relation) -> _Relation:
        ref = TableRef(message.namespace or "pg_catalog", message.name)
        # A Relation message follows every schema change: the catalog is read again.
        self.catalog.forget(ref.qualified)
        return _Relation(
            ref,
            tuple(c.name for c in message.columns),
            tuple(text_converter(c.type_oid, c.type_modifier) for c in message.columns),
            tuple(c.is_key for c in message.columns),
        )

    def _change(self, txn: _Transaction, message: Insert | Update | Delete) -> Change:
        rel = self._relations[message.relation_oid]
        if isinstance(message, Insert):
            after, unchanged = self._row(rel, message.new)
            return self._make(txn, rel.ref, "insert", None, after, unchanged)
        if isinstance(message, Update):
            after, unchanged = self._row(rel, message.new)
            before = None
            if message.old is not None:
                before = self._old(rel, message.old, message.old_kind == "K")
            return self._make(txn, rel.ref, "update", before, after, unchanged)
        before = self._old(rel, message.old, message.old_kind == "K")
        return self._make(txn, rel.ref, "delete", before, None, ())

    def _fast_change(self, txn: _Transaction, data: bytes) -> Change | None:
        """An Insert, or an Update without an old tuple (nearly every change), decoded straight
        into its Change. None when the message is anything else, or is not well formed:
        the general path then decodes it, and raises its precise error."""
        if data[5] != 0x4E:  # 'N': no old tuple
            return None
        rel = self._relations.get(_u32(data, 1)[0])
        if rel is None:
            return None
        try:
            after, unchanged, end = _new_row(data, 6, rel.columns)
        except (IndexError, ValueError, struct.error, _NotFast):
            return None
        if end != len(data):
            return None
        index = txn.index
        txn.index = index + 1
        return Change(
            rel.ref,
            "insert" if data[0] == 0x49 else "update",
            None,
            after,
            f"{txn.position_prefix}{index:08d}",
            txn.xid,
            txn.committed_at,
            txn.origin,
            unchanged,
            f"{txn.identity_prefix}{index}",
        )

    def _make(
        self,
        txn: _Transaction,
        ref: TableRef,
        op: Op,
        before: Row | None,
        after: Row | None,
        unchanged: tuple[str, ...],
    ) -> Change:
        index = txn.index
        txn.index += 1
        return Change(
            table=ref,
            op=op,
            before=before,
            after=after,
            position=f"{txn.position_prefix}{index:08d}",
            txid=txn.xid,
            committed_at=txn.committed_at,
            origin=txn.origin,
            unchanged=unchanged,
            identity=f"{txn.identity_prefix}{index}",
        )

    @staticmethod
    def _row(rel: _Relation, values: TupleData) -> tuple[dict[str, Any], tuple[str, ...]]:
        row: dict[str, Any] = {}
        unchanged: list[str] = []
        for name, convert, value in zip(rel.names, rel.converters, values, strict=False):
            if value.__class__ is str:  # text format: nearly every value
                row[name] = convert(value)
            elif value is None:
                row[name] = None
            elif value is UNCHANGED:
                # An unchanged TOASTed value is not sent: say so, never publish it as null.
                unchanged.append(name)
            elif isinstance(value, bytes):
                row[name] = base64.b64encode(value).decode("ascii")
        return row, tuple(unchanged)

    @classmethod
    def _old(cls, rel: _Relation, values: TupleData, key_only: bool) -> dict[str, Any]:
        row, _ = cls._row(rel, values)
        if key_only:
            # A 'K' tuple carries the replica identity columns; the others are absent, not NULL.
            return {
                n: row.get(n) for n, is_key in zip(rel.names, rel.key_flags, strict=False) if is_key
            }
        return row


class _NotFast(Exception):
    """A tuple _new_row leaves to the general decoder."""


_NEW_TUPLE_ONLY = frozenset((b"I", b"U"))
_u32 = struct.Struct("!I").unpack_from


def _new_row(
    data: bytes,
    pos: int,
    columns: tuple[tuple[str, TextConvert], ...],
) -> tuple[dict[str, Any], tuple[str, ...], int]:
    """The TupleData at ``pos`` read straight into a row of converted values, with the names
    of unchanged TOASTed columns, and the offset after it: what ``decode`` and ``_row`` do
    together, in one pass. Text, null and unchanged columns only (binary: ``_NotFast``); the
    caller checks the end offset, so a length running past the message is caught there."""
    if data[pos] << 8 | data[pos + 1] != len(columns):
        raise _NotFast
    pos += 2
    row: dict[str, Any] = {}
    unchanged: list[str] | None = None
    for name, convert in columns:
        kind = data[pos]
        if kind == 0x74:  # 't'
            (length,) = _u32(data, pos + 1)
            start = pos + 5
            pos = start + length
            row[name] = convert(data[start:pos].decode())
        elif kind == 0x6E:  # 'n'
            row[name] = None
            pos += 1
        elif kind == 0x75:  # 'u'
            if unchanged is None:
                unchanged = []
            unchanged.append(name)
            pos += 1
        else:
            raise _NotFast
    return row, (tuple(unchanged) if unchanged else ()), pos


def check_slot(engine: Engine, slot: str) -> int:
    """The slot's confirmed flush LSN, after checking that the slot can be streamed."""
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT plugin, wal_status, "
                "pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint AS confirmed "
                "FROM pg_replication_slots WHERE slot_name = :s"
            ),
            {"s": slot},
        ).first()
    if row is None:
        raise PermanentError(
            f"replication slot {slot!r} does not exist; run `cdc setup` "
            "(or name the DBA's slot in CDC_SLOT_NAME)"
        )
    if row.plugin != "pgoutput":
        raise PermanentError(
            f"replication slot {slot!r} uses the {row.plugin!r} plugin; "
            "the logical mode needs a pgoutput slot"
        )
    if row.wal_status == "lost":
        raise PermanentError(slot_lost_message(slot))
    return int(row.confirmed or 0)


@dataclass(frozen=True)
class SlotStatus:
    exists: bool
    wal_status: str | None = None
    active: bool = False
    lag_bytes: int | None = None
    confirmed_flush_lsn: str | None = None
    retained_bytes: int | None = None  # WAL kept for the slot: current LSN - restart LSN


def slot_status(engine: Engine, slot: str) -> SlotStatus:
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT wal_status, active, confirmed_flush_lsn::text AS flushed, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained "
                "FROM pg_replication_slots WHERE slot_name = :s"
            ),
            {"s": slot},
        ).first()
    if row is None:
        return SlotStatus(False)
    return SlotStatus(True, row.wal_status, row.active, row.lag, row.flushed, row.retained)

"""Transaction assembly: pgoutput messages, in stream order, into Changes.

Keeps what a message needs from those before it: each relation's shape (names, converters,
key columns), the transaction being read (commit LSN, xid, commit time, origin, the index of
its next change) and the safe LSN, the highest position that may be confirmed to PostgreSQL
once every change read so far is acknowledged: the end of the last transaction read, or a
keepalive's WAL end or a non-transactional message met between transactions (nothing of a
transaction is ever confirmed before its commit, so a crash re-streams it whole, with the same
event ids: commit LSN and index). No I/O: the source hands it the XLogData payloads.

Only the tables of CDC_TABLES are published, whatever the publication holds (a DBA's may hold
more, and one narrowed by ``cdc setup`` still sends what was written before): the changes of
other relations are dropped and counted, take no schema version, and keep their index, so that
event ids do not depend on CDC_TABLES. The slot moves past them like past any transaction.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from cdc.bus.events import Change, Op, Row
from cdc.capture.history import Version
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
)
from cdc.capture.pgoutput_rows import read_new_row
from cdc.capture.pgtypes import TextConvert, text_converter
from cdc.capture.sources import WATERMARK_PREFIX, Mark, Unrenderable
from cdc.core.dialects.postgresql import ORIGIN_MESSAGE_PREFIX
from cdc.core.tables import TableRef

_u32 = struct.Struct("!I").unpack_from  # a row message's relation oid, after its kind byte


class SchemaTracker(Protocol):
    def track(
        self, ref: TableRef, message: Relation, position: str
    ) -> tuple[Version, Version | None]:
        """The table's version from ``position`` on, given its Relation message, and the
        version it replaces when its shape changed there (None: unchanged)."""
        ...


@dataclass
class _Relation:
    ref: TableRef
    names: tuple[str, ...]
    converters: tuple[TextConvert, ...]
    key_flags: tuple[bool, ...]
    # the key of the events (None: the worker looks it up) and the schema version
    key_columns: tuple[str, ...] | None = None
    version: int = 1
    columns: tuple[tuple[str, TextConvert], ...] = ()  # (name, converter): for read_new_row

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
class TransactionAssembler:
    # Called with a table's qualified name when its Relation message comes: PostgreSQL sends
    # one after every schema change, so the catalog is read again.
    forget: Callable[[str], None]
    # Follows each table's schema version (None: every table is at version 1).
    tracker: SchemaTracker | None = None
    # The tables published (qualified names; None: every one the publication sends).
    tracked: Collection[str] | None = None
    safe_lsn: int = 0
    marks: list[Mark] = field(default_factory=list)  # backfill watermarks, by the caller's read
    # changes whose values do not convert, by the caller's read: dead letters with their text
    unrenderable: list[Unrenderable] = field(default_factory=list)
    ignored: int = 0  # changes of tables outside ``tracked``, dropped
    _relations: dict[int, _Relation] = field(default_factory=dict)
    _ignored: set[int] = field(default_factory=set)  # the oids of those tables
    _txn: _Transaction | None = None

    def restart(self, confirmed_lsn: int) -> None:
        """A new stream from the slot's confirmed position: PostgreSQL sends the Relation
        messages again, and what was read but not acknowledged comes again, so nothing beyond
        ``confirmed_lsn`` counts as safe."""
        self._relations.clear()
        self._ignored.clear()
        self._txn = None
        self.safe_lsn = confirmed_lsn

    def abandon(self) -> None:
        """The stream broke: the transaction being read comes again, whole."""
        self._txn = None

    def on_data(self, data: bytes, changes: list[Change]) -> None:
        """One XLogData payload: its changes are appended to ``changes``."""
        txn = self._txn
        if txn is not None:
            new = read_new_row(data, self._relations)
            if new is not None:
                rel, op, after, unchanged = new
                index = txn.index
                txn.index = index + 1
                changes.append(
                    Change(
                        rel.ref,
                        op,
                        None,
                        after,
                        f"{txn.position_prefix}{index:08d}",
                        txn.xid,
                        txn.committed_at,
                        txn.origin,
                        unchanged,
                        f"{txn.identity_prefix}{index}",
                        rel.key_columns,
                        rel.version,
                    )
                )
                return
            if self._ignored and data[:1] in b"IUD" and _u32(data, 1)[0] in self._ignored:
                self._ignore(txn)  # not even decoded
                return
        self.on_message(decode(data), changes)

    def _ignore(self, txn: _Transaction) -> None:
        txn.index += 1
        self.ignored += 1

    def on_keepalive(self, wal_end: int) -> None:
        if self._txn is None:
            # Between transactions, everything before the WAL end has been received.
            self.safe_lsn = max(self.safe_lsn, wal_end)

    def on_message(self, message: PgOutputMessage, changes: list[Change]) -> None:
        txn = self._txn
        if isinstance(message, Insert | Update | Delete):
            assert txn is not None, "row change outside a transaction"
            if message.relation_oid in self._ignored:
                self._ignore(txn)
            else:
                index = txn.index
                try:
                    changes.append(self._change(txn, message))
                except (ValueError, TypeError, KeyError, ArithmeticError) as error:
                    txn.index = index  # the raw change takes the index the converted one had
                    self.unrenderable.append(self._raw(txn, message, error))
        elif isinstance(message, Begin):
            self._txn = _Transaction(message.final_lsn, message.xid, message.commit_time)
        elif isinstance(message, Commit):
            self._txn = None
            self.safe_lsn = max(self.safe_lsn, message.end_lsn)
        elif isinstance(message, Relation):
            name = f"{message.namespace or 'pg_catalog'}.{message.name}"
            if self.tracked is None or name in self.tracked:
                self._ignored.discard(message.oid)  # renamed into CDC_TABLES, say
                self._relations[message.oid] = self._relation(message, changes)
            else:
                self._ignored.add(message.oid)
                self._relations.pop(message.oid, None)
        elif isinstance(message, Truncate):
            assert txn is not None, "truncate outside a transaction"
            for oid in message.relation_oids:
                if oid in self._ignored:
                    self._ignore(txn)
                else:
                    changes.append(_make(txn, self._relations[oid], "truncate", None, None, ()))
        elif isinstance(message, Message):
            if (
                message.transactional
                and message.prefix == ORIGIN_MESSAGE_PREFIX
                and txn is not None
            ):
                txn.origin = message.content.decode() or "legacy"
            elif message.transactional and message.prefix == WATERMARK_PREFIX and txn is not None:
                # A backfill's chunk goes right here: positions <commit LSN>.<index>
                self.marks.append(
                    Mark(len(changes), message.content.decode(), txn.position_prefix[:-1])
                )
            elif not message.transactional and txn is None:
                self.safe_lsn = max(self.safe_lsn, message.lsn)
        elif isinstance(message, Origin) and txn is not None:
            txn.origin = message.name

    def _relation(self, message: Relation, changes: list[Change]) -> _Relation:
        ref = TableRef(message.namespace or "pg_catalog", message.name)
        self.forget(ref.qualified)
        relation = _Relation(
            ref,
            tuple(c.name for c in message.columns),
            tuple(text_converter(c.type_oid, c.type_modifier) for c in message.columns),
            tuple(c.is_key for c in message.columns),
        )
        txn = self._txn
        if self.tracker is None or txn is None:
            return relation
        # PostgreSQL sends a Relation before the first change of a table in a session and
        # after each of its DDL: a schema change sorts right before the change that follows,
        # after the one before (and its key-change halves), and takes no index, so the changes
        # keep theirs whether or not a re-stream sees the schema change again.
        index = txn.index
        position = f"{txn.position_prefix}{index - 1:08d}.s" if index else f"{txn.position_prefix}-"
        version, previous = self.tracker.track(ref, message, position)
        relation.key_columns = tuple(version.shape["key"])
        relation.version = version.number
        if previous is not None:
            changes.append(
                Change(
                    ref,
                    "schema",
                    previous.shape,
                    version.shape,
                    position,
                    txn.xid,
                    txn.committed_at,
                    txn.origin,
                    (),
                    f"{txn.identity_prefix}{index}:schema:{ref.qualified}",
                    (),
                    version.number,
                )
            )
        return relation

    def _change(self, txn: _Transaction, message: Insert | Update | Delete) -> Change:
        rel = self._relations[message.relation_oid]
        if isinstance(message, Insert):
            after, unchanged = _row(rel, message.new)
            return _make(txn, rel, "insert", None, after, unchanged)
        if isinstance(message, Update):
            after, unchanged = _row(rel, message.new)
            before = None
            if message.old is not None:
                before = _old(rel, message.old, message.old_kind == "K")
            return _make(txn, rel, "update", before, after, unchanged)
        before = _old(rel, message.old, message.old_kind == "K")
        return _make(txn, rel, "delete", before, None, ())

    def _raw(
        self, txn: _Transaction, message: Insert | Update | Delete, error: BaseException
    ) -> Unrenderable:
        """The change with its values as PostgreSQL sent them (text), for the dead letters."""
        rel = self._relations[message.relation_oid]
        # text as sent, and no key columns: a dead letter's key is null
        raw = _Relation(
            rel.ref, rel.names, tuple(str for _ in rel.names), rel.key_flags, key_columns=()
        )
        if isinstance(message, Insert):
            change = _make(txn, raw, "insert", None, _row(raw, message.new)[0], ())
        elif isinstance(message, Update):
            old = None if message.old is None else _row(raw, message.old)[0]
            change = _make(txn, raw, "update", old, _row(raw, message.new)[0], ())
        else:
            change = _make(txn, raw, "delete", _row(raw, message.old)[0], None, ())
        reason = (
            f"cannot convert the change at position {change.position} of "
            f"{rel.ref.qualified}: {error}"
        )
        return Unrenderable(change, reason)


def _make(
    txn: _Transaction,
    rel: _Relation,
    op: Op,
    before: Row | None,
    after: Row | None,
    unchanged: tuple[str, ...],
) -> Change:
    index = txn.index
    txn.index += 1
    return Change(
        table=rel.ref,
        op=op,
        before=before,
        after=after,
        position=f"{txn.position_prefix}{index:08d}",
        txid=txn.xid,
        committed_at=txn.committed_at,
        origin=txn.origin,
        unchanged=unchanged,
        identity=f"{txn.identity_prefix}{index}",
        key_columns=rel.key_columns,
        schema_version=rel.version,
    )


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


def _old(rel: _Relation, values: TupleData, key_only: bool) -> dict[str, Any]:
    row, _ = _row(rel, values)
    if key_only:
        # A 'K' tuple carries the replica identity columns; the others are absent, not NULL.
        return {
            n: row.get(n) for n, is_key in zip(rel.names, rel.key_flags, strict=False) if is_key
        }
    return row

"""Decoding of PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1).

The ``logical`` capture mode streams a replication slot with ``proto_version '1'`` and
``messages 'true'``; each XLogData ('w') frame carries one message, starting at its type byte.
``decode`` turns that payload into a frozen value and does no I/O, so the streaming shell stays
thin and every wire detail is tested with literals. Integers are big-endian; strings are
NUL-terminated in the replication connection's client encoding (UTF-8 assumed); timestamps are
microseconds since 2000-01-01 UTC.

Column values stay as PostgreSQL sent them (text output form, or bytes in binary mode);
``cdc.capture.pgtypes`` turns text into the event contract's JSON form.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, NamedTuple, TypeAlias, cast


class DecodeError(ValueError):
    """A payload that is not a well-formed pgoutput protocol version 1 message."""


class Unchanged(enum.Enum):
    """Marker of a TOASTed value that an update left unchanged, so PostgreSQL did not send it."""

    UNCHANGED = "u"

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = Unchanged.UNCHANGED

ColumnValue: TypeAlias = str | bytes | Literal[Unchanged.UNCHANGED] | None
TupleData: TypeAlias = tuple[ColumnValue, ...]
ReplicaIdentity: TypeAlias = Literal["d", "n", "f", "i"]
OldKind: TypeAlias = Literal["K", "O"]

PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)

# Messages met once per row or per transaction are NamedTuples: a frozen dataclass costs four
# times as much to make. The rarer ones stay dataclasses.


class Begin(NamedTuple):
    final_lsn: int  # equals the matching Commit's commit_lsn
    commit_time: datetime
    xid: int


class Commit(NamedTuple):
    flags: int
    commit_lsn: int
    end_lsn: int  # the LSN just past the commit record: what to confirm as flushed
    commit_time: datetime


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    is_key: bool
    name: str
    type_oid: int
    type_modifier: int


@dataclass(frozen=True, slots=True)
class Relation:
    """A table's shape; sent before its first change in a session and again after any DDL."""

    oid: int
    namespace: str  # '' for pg_catalog
    name: str
    replica_identity: ReplicaIdentity
    columns: tuple[RelationColumn, ...]  # dropped and generated columns are not sent


@dataclass(frozen=True, slots=True)
class Type:
    """Sent before a Relation that uses a type that is not built in (enum, domain, composite)."""

    oid: int
    namespace: str
    name: str


class Insert(NamedTuple):
    relation_oid: int
    new: TupleData


class Update(NamedTuple):
    """``old`` is absent unless the key changed ('K') or the replica identity is FULL ('O').

    A 'K' tuple has every column of the relation, with 'n' (None) for the non-key ones: those
    are not NULL in the row, they are simply not part of the key.
    """

    relation_oid: int
    old: TupleData | None
    old_kind: OldKind | None
    new: TupleData


class Delete(NamedTuple):
    relation_oid: int
    old: TupleData  # key columns only ('K', others None) or the whole row ('O')
    old_kind: OldKind


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int
    relation_oids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        return bool(self.options & 1)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & 2)


@dataclass(frozen=True, slots=True)
class Message:
    """A ``pg_logical_emit_message``; a non-transactional one arrives outside Begin/Commit."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


PgOutputMessage: TypeAlias = (
    Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | Message
)

# Offsets below count from the type byte at 0.
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!BQQq")
_U64 = struct.Struct("!Q")
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_OID_KIND = struct.Struct("!IB")
_COLUMN = struct.Struct("!Ii")  # type oid, type modifier (-1 when none)
_REPLIDENT_COUNT = struct.Struct("!BH")
_FLAGS_LSN = struct.Struct("!BQ")
_COUNT_OPTIONS = struct.Struct("!IB")
_u32 = _U32.unpack_from
_u16 = _U16.unpack_from

_KIND_NULL, _KIND_UNCHANGED, _KIND_TEXT, _KIND_BINARY = b"nutb"
_NEW, _KEY, _OLD = b"NKO"
_OLD_MARKERS = frozenset((_KEY, _OLD))
_REPLICA_IDENTITIES = frozenset("dnfi")
# Not int(x, 16) alone: it would also take '0x', '_' and signs.
_LSN_TEXT = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def _time(micros: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=micros)


def _string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(0, pos)  # ValueError when the NUL is missing: a truncated message
    return data[pos:end].decode(), end + 1


def _tuple(data: bytes, pos: int) -> tuple[TupleData, int]:
    (count,) = _u16(data, pos)
    pos += 2
    size = len(data)
    values: list[ColumnValue] = []
    append = values.append
    for _ in range(count):
        kind = data[pos]
        if kind == _KIND_TEXT:  # by far the most common: pgoutput's default is text
            (length,) = _u32(data, pos + 1)
            start = pos + 5
            pos = start + length
            if pos > size:
                raise DecodeError(f"column value of {length} bytes runs past the message end")
            append(data[start:pos].decode())
        elif kind == _KIND_NULL:
            append(None)
            pos += 1
        elif kind == _KIND_UNCHANGED:
            append(UNCHANGED)
            pos += 1
        elif kind == _KIND_BINARY:
            (length,) = _u32(data, pos + 1)
            start = pos + 5
            pos = start + length
            if pos > size:
                raise DecodeError(f"column value of {length} bytes runs past the message end")
            append(data[start:pos])
        else:
            raise DecodeError(f"unknown tuple column kind {chr(kind)!r} at offset {pos}")
    return tuple(values), pos


def _begin(data: bytes) -> tuple[PgOutputMessage, int]:
    final_lsn, micros, xid = _BEGIN.unpack_from(data, 1)
    return Begin(final_lsn, _time(micros), xid), 1 + _BEGIN.size


def _commit(data: bytes) -> tuple[PgOutputMessage, int]:
    flags, commit_lsn, end_lsn, micros = _COMMIT.unpack_from(data, 1)
    return Commit(flags, commit_lsn, end_lsn, _time(micros)), 1 + _COMMIT.size


def _origin(data: bytes) -> tuple[PgOutputMessage, int]:
    (commit_lsn,) = _U64.unpack_from(data, 1)
    name, pos = _string(data, 9)
    return Origin(commit_lsn, name), pos


def _relation(data: bytes) -> tuple[PgOutputMessage, int]:
    (oid,) = _u32(data, 1)
    namespace, pos = _string(data, 5)
    name, pos = _string(data, pos)
    replident, count = _REPLIDENT_COUNT.unpack_from(data, pos)
    pos += _REPLIDENT_COUNT.size
    identity = chr(replident)
    if identity not in _REPLICA_IDENTITIES:
        raise DecodeError(f"unknown replica identity {identity!r} for relation {oid}")
    columns = []
    for _ in range(count):
        flags = data[pos]
        column, pos = _string(data, pos + 1)
        type_oid, type_modifier = _COLUMN.unpack_from(data, pos)
        pos += _COLUMN.size
        columns.append(RelationColumn(bool(flags & 1), column, type_oid, type_modifier))
    return Relation(oid, namespace, name, cast(ReplicaIdentity, identity), tuple(columns)), pos


def _type(data: bytes) -> tuple[PgOutputMessage, int]:
    (oid,) = _u32(data, 1)
    namespace, pos = _string(data, 5)
    name, pos = _string(data, pos)
    return Type(oid, namespace, name), pos


def _insert(data: bytes) -> tuple[PgOutputMessage, int]:
    oid, marker = _OID_KIND.unpack_from(data, 1)
    if marker != _NEW:
        raise DecodeError(f"expected tuple marker 'N' in Insert, got {chr(marker)!r}")
    new, pos = _tuple(data, 6)
    return Insert(oid, new), pos


def _update(data: bytes) -> tuple[PgOutputMessage, int]:
    oid, marker = _OID_KIND.unpack_from(data, 1)
    old: TupleData | None = None
    old_kind: OldKind | None = None
    pos = 6
    if marker in _OLD_MARKERS:
        old, pos = _tuple(data, pos)
        old_kind = "K" if marker == _KEY else "O"
        if data[pos] != _NEW:
            raise DecodeError(f"expected tuple marker 'N' after the old tuple, got {data[pos]!r}")
        pos += 1
    elif marker != _NEW:
        raise DecodeError(f"expected tuple marker 'K', 'O' or 'N' in Update, got {chr(marker)!r}")
    new, pos = _tuple(data, pos)
    return Update(oid, old, old_kind, new), pos


def _delete(data: bytes) -> tuple[PgOutputMessage, int]:
    oid, marker = _OID_KIND.unpack_from(data, 1)
    if marker not in _OLD_MARKERS:
        raise DecodeError(f"expected tuple marker 'K' or 'O' in Delete, got {chr(marker)!r}")
    old, pos = _tuple(data, 6)
    return Delete(oid, old, "K" if marker == _KEY else "O"), pos


def _truncate(data: bytes) -> tuple[PgOutputMessage, int]:
    count, options = _COUNT_OPTIONS.unpack_from(data, 1)
    oids = struct.unpack_from(f"!{count}I", data, 6)
    return Truncate(options, oids), 6 + 4 * count


def _message(data: bytes) -> tuple[PgOutputMessage, int]:
    # Protocol version 1 has no xid here; version 2 adds one for streamed transactions.
    flags, lsn = _FLAGS_LSN.unpack_from(data, 1)
    prefix, pos = _string(data, 1 + _FLAGS_LSN.size)
    (length,) = _u32(data, pos)
    pos += 4
    return Message(bool(flags & 1), lsn, prefix, data[pos : pos + length]), pos + length


_DECODERS: Final = {
    ord("B"): ("Begin", _begin),
    ord("C"): ("Commit", _commit),
    ord("O"): ("Origin", _origin),
    ord("R"): ("Relation", _relation),
    ord("Y"): ("Type", _type),
    ord("I"): ("Insert", _insert),
    ord("U"): ("Update", _update),
    ord("D"): ("Delete", _delete),
    ord("T"): ("Truncate", _truncate),
    ord("M"): ("Message", _message),
}
# Types that only later protocol versions or options send: named so the error says what to fix.
_NOT_VERSION_1: Final = {
    "S": "Stream Start",
    "E": "Stream Stop",
    "c": "Stream Commit",
    "A": "Stream Abort",
    "b": "Begin Prepare",
    "P": "Prepare",
    "K": "Commit Prepared",
    "r": "Rollback Prepared",
    "p": "Stream Prepare",
}


def decode(payload: bytes | memoryview) -> PgOutputMessage:
    """The message in one XLogData payload; raises ``DecodeError`` if it is not well formed."""
    data = payload if isinstance(payload, bytes) else bytes(payload)
    if not data:
        raise DecodeError("empty pgoutput message")
    entry = _DECODERS.get(data[0])
    if entry is None:
        kind = chr(data[0])
        later = _NOT_VERSION_1.get(kind)
        if later is not None:
            raise DecodeError(
                f"pgoutput {later} message ({kind!r}) needs protocol version 2 or later; "
                "start replication with proto_version '1' and without streaming or two_phase"
            )
        raise DecodeError(f"unknown pgoutput message type {kind!r} (0x{data[0]:02x})")
    name, decoder = entry
    try:
        message, end = decoder(data)
    except DecodeError as exc:
        raise DecodeError(f"malformed {name} message: {exc}") from exc
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        # struct.error/IndexError: reading past the end; ValueError: a missing NUL terminator
        # or invalid UTF-8; OverflowError: a timestamp outside what datetime holds.
        raise DecodeError(
            f"truncated or malformed {name} message ({len(data)} bytes): {exc}"
        ) from exc
    if end != len(data):
        problem = "truncated" if end > len(data) else f"{len(data) - end} trailing bytes after"
        raise DecodeError(f"{problem} {name} message ({len(data)} bytes, expected {end})")
    return message


def format_lsn(lsn: int) -> str:
    """PostgreSQL's text form of an LSN: '16/B374D848'."""
    if not 0 <= lsn < 1 << 64:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """The LSN written as '16/B374D848' (either case, as pg_lsn accepts)."""
    match = _LSN_TEXT.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an LSN: {text!r} (expected the form '16/B374D848')")
    return int(match[1], 16) << 32 | int(match[2], 16)

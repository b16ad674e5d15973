from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Literal

import pytest

from cdc.capture.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    DecodeError,
    Delete,
    Insert,
    Message,
    Origin,
    Relation,
    RelationColumn,
    Truncate,
    Type,
    Update,
    decode,
    format_lsn,
    parse_lsn,
)

# --- a builder of pgoutput protocol version 1 messages, from the documented layout ------------

COMMIT_TIME = datetime(2026, 11, 28, 17, 45, 52, 500000, tzinfo=UTC)
# Microseconds since 2000-01-01 UTC, computed independently of the decoder.
COMMIT_MICROS = (
    int((COMMIT_TIME - datetime(2000, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000 + 500_000
)
LSN = 0x16_B374D848
END_LSN = LSN + 0x38


def cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def tuple_data(*columns: object) -> bytes:
    """None -> 'n', UNCHANGED -> 'u', str -> 't', bytes -> 'b'."""
    out = struct.pack("!H", len(columns))
    for value in columns:
        if value is None:
            out += b"n"
        elif value is UNCHANGED:
            out += b"u"
        elif isinstance(value, str):
            out += b"t" + struct.pack("!I", len(value.encode())) + value.encode()
        elif isinstance(value, bytes):
            out += b"b" + struct.pack("!I", len(value)) + value
        else:
            raise TypeError(value)
    return out


def begin(final_lsn: int = LSN, micros: int = COMMIT_MICROS, xid: int = 771) -> bytes:
    return b"B" + struct.pack("!QqI", final_lsn, micros, xid)


def commit(flags: int = 0, micros: int = COMMIT_MICROS) -> bytes:
    return b"C" + struct.pack("!BQQq", flags, LSN, END_LSN, micros)


def origin(name: str, lsn: int = LSN) -> bytes:
    return b"O" + struct.pack("!Q", lsn) + cstring(name)


def relation(
    oid: int, namespace: str, name: str, identity: bytes, columns: list[tuple[int, str, int, int]]
) -> bytes:
    out = b"R" + struct.pack("!I", oid) + cstring(namespace) + cstring(name)
    out += identity + struct.pack("!H", len(columns))
    for flags, column, type_oid, typmod in columns:
        out += struct.pack("!B", flags) + cstring(column) + struct.pack("!Ii", type_oid, typmod)
    return out


def type_message(oid: int, namespace: str, name: str) -> bytes:
    return b"Y" + struct.pack("!I", oid) + cstring(namespace) + cstring(name)


def insert(oid: int, new: bytes) -> bytes:
    return b"I" + struct.pack("!I", oid) + b"N" + new


def update(oid: int, new: bytes, old: bytes | None = None, kind: bytes = b"K") -> bytes:
    out = b"U" + struct.pack("!I", oid)
    if old is not None:
        out += kind + old
    return out + b"N" + new


def delete(oid: int, old: bytes, kind: bytes = b"K") -> bytes:
    return b"D" + struct.pack("!I", oid) + kind + old


def truncate(options: int, *oids: int) -> bytes:
    return b"T" + struct.pack("!IB", len(oids), options) + struct.pack(f"!{len(oids)}I", *oids)


def message(transactional: bool, prefix: str, content: bytes, lsn: int = LSN) -> bytes:
    return (
        b"M"
        + struct.pack("!BQ", int(transactional), lsn)
        + cstring(prefix)
        + struct.pack("!I", len(content))
        + content
    )


# --- transactions ---------------------------------------------------------------------------


def test_begin_and_commit() -> None:
    assert decode(begin(xid=0xFFFFFFF0)) == Begin(LSN, COMMIT_TIME, 0xFFFFFFF0)
    assert decode(commit()) == Commit(0, LSN, END_LSN, COMMIT_TIME)


def test_commit_time_is_an_aware_utc_datetime_from_the_2000_epoch() -> None:
    decoded = decode(begin(micros=0))
    assert isinstance(decoded, Begin)
    assert decoded.commit_time == datetime(2000, 1, 1, tzinfo=UTC)
    assert decoded.commit_time.tzinfo is UTC
    before_epoch = decode(commit(micros=-1))
    assert isinstance(before_epoch, Commit)
    assert before_epoch.commit_time == datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_origin() -> None:
    assert decode(origin("pg_16389")) == Origin(LSN, "pg_16389")


# --- schema -----------------------------------------------------------------------------------


def test_relation_with_key_flags_and_type_modifiers() -> None:
    payload = relation(
        16390,
        "public",
        "orders",
        b"d",
        [
            (1, "id", 20, -1),
            (0, "price", 1700, 655366),
            (0, "note", 1043, 104),
            (0, "é", 25, -1),
        ],
    )
    assert decode(payload) == Relation(
        16390,
        "public",
        "orders",
        "d",
        (
            RelationColumn(True, "id", 20, -1),
            RelationColumn(False, "price", 1700, 655366),
            RelationColumn(False, "note", 1043, 104),
            RelationColumn(False, "é", 25, -1),
        ),
    )


@pytest.mark.parametrize("identity", ["d", "n", "f", "i"])
def test_relation_replica_identities(identity: str) -> None:
    decoded = decode(relation(1, "", "t", identity.encode(), []))
    assert isinstance(decoded, Relation)
    assert decoded.replica_identity == identity
    assert decoded.namespace == ""  # pg_catalog is sent as an empty namespace
    assert decoded.columns == ()


def test_type() -> None:
    assert decode(type_message(16385, "public", "mood")) == Type(16385, "public", "mood")


# --- row changes ------------------------------------------------------------------------------


def test_insert_with_every_column_kind() -> None:
    payload = insert(16390, tuple_data("42", None, UNCHANGED, b"\x00\x01\xff", "", "é"))
    assert decode(payload) == Insert(16390, ("42", None, UNCHANGED, b"\x00\x01\xff", "", "é"))


def test_decode_accepts_a_memoryview_of_a_larger_frame() -> None:
    # The streaming shell hands over the XLogData payload without copying the frame header.
    frame = b"w" + b"\0" * 24 + insert(7, tuple_data("a"))
    assert decode(memoryview(frame)[25:]) == Insert(7, ("a",))


def test_update_without_old_tuple() -> None:
    payload = update(16390, tuple_data("1", UNCHANGED, "new"))
    assert decode(payload) == Update(16390, None, None, ("1", UNCHANGED, "new"))


def test_update_with_key_old_tuple_when_the_key_changed() -> None:
    # Non-key columns of a 'K' tuple are sent as 'n': not part of the key, not NULL in the row.
    payload = update(16390, tuple_data("2", "x", "y"), old=tuple_data("1", None, None), kind=b"K")
    assert decode(payload) == Update(16390, ("1", None, None), "K", ("2", "x", "y"))


def test_update_with_full_old_tuple() -> None:
    payload = update(16390, tuple_data("1", UNCHANGED), old=tuple_data("1", "before"), kind=b"O")
    assert decode(payload) == Update(16390, ("1", "before"), "O", ("1", UNCHANGED))


@pytest.mark.parametrize("kind", ["K", "O"])
def test_delete(kind: Literal["K", "O"]) -> None:
    payload = delete(16390, tuple_data("1", None), kind=kind.encode())
    assert decode(payload) == Delete(16390, ("1", None), kind)


@pytest.mark.parametrize(
    ("options", "cascade", "restart_identity"),
    [(0, False, False), (1, True, False), (2, False, True), (3, True, True)],
)
def test_truncate_options(options: int, cascade: bool, restart_identity: bool) -> None:
    decoded = decode(truncate(options, 16390, 16400, 0xFFFFFFFE))
    assert decoded == Truncate(options, (16390, 16400, 0xFFFFFFFE))
    assert isinstance(decoded, Truncate)
    assert (decoded.cascade, decoded.restart_identity) == (cascade, restart_identity)


def test_transactional_and_non_transactional_messages() -> None:
    assert decode(message(True, "audit", b'{"a":1}')) == Message(True, LSN, "audit", b'{"a":1}')
    assert decode(message(False, "wake", b"\x00\xff")) == Message(False, LSN, "wake", b"\x00\xff")
    assert decode(message(False, "empty", b"")) == Message(False, LSN, "empty", b"")


# --- malformed input --------------------------------------------------------------------------

SAMPLES = [
    begin(),
    commit(),
    origin("o"),
    relation(1, "s", "t", b"f", [(1, "id", 23, -1)]),
    type_message(5, "s", "e"),
    insert(1, tuple_data("a", None, UNCHANGED, b"b")),
    update(1, tuple_data("a"), old=tuple_data("b"), kind=b"O"),
    update(1, tuple_data("a")),
    delete(1, tuple_data("a")),
    truncate(3, 1, 2),
    message(True, "p", b"xyz"),
]


@pytest.mark.parametrize("payload", SAMPLES, ids=lambda p: chr(p[0]))
def test_every_truncation_is_a_decode_error(payload: bytes) -> None:
    for end in range(len(payload)):
        with pytest.raises(DecodeError):
            decode(payload[:end])


@pytest.mark.parametrize("payload", SAMPLES, ids=lambda p: chr(p[0]))
def test_trailing_bytes_are_a_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError, match="trailing"):
        decode(payload + b"\0")


def test_unknown_message_type() -> None:
    with pytest.raises(DecodeError, match=r"unknown pgoutput message type 'Z' \(0x5a\)"):
        decode(b"Z\0\0")
    with pytest.raises(ValueError, match="empty"):  # DecodeError is a ValueError
        decode(b"")


def test_messages_of_later_protocol_versions_name_the_setting_to_fix() -> None:
    with pytest.raises(DecodeError, match=r"Stream Start.*proto_version '1'"):
        decode(b"S" + struct.pack("!IB", 7, 1))


def test_a_column_value_longer_than_the_message() -> None:
    payload = insert(1, b"\0\x01t" + struct.pack("!I", 100) + b"abc")
    with pytest.raises(DecodeError, match="runs past the message end"):
        decode(payload)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (insert(1, b"\0\x01x"), "unknown tuple column kind 'x'"),
        (b"I" + struct.pack("!I", 1) + b"K" + tuple_data("a"), "expected tuple marker 'N'"),
        (b"D" + struct.pack("!I", 1) + b"N" + tuple_data("a"), "expected tuple marker 'K' or 'O'"),
        (b"U" + struct.pack("!I", 1) + b"X" + tuple_data("a"), "'K', 'O' or 'N'"),
        (update(1, tuple_data("a"), old=tuple_data("b")).replace(b"N\0", b"X\0"), "marker 'N'"),
        (relation(1, "s", "t", b"x", []), "unknown replica identity 'x'"),
        (insert(1, tuple_data("ok")).replace(b"ok", b"\xff\xfe"), "truncated or malformed Insert"),
    ],
)
def test_malformed_messages(payload: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode(payload)


# --- LSNs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lsn", "text"),
    [
        (0, "0/0"),
        (0x16_B374D848, "16/B374D848"),
        (0xFFFFFFFF_FFFFFFFF, "FFFFFFFF/FFFFFFFF"),
        (0x1_00000000, "1/0"),
    ],
)
def test_lsn_text_round_trip(lsn: int, text: str) -> None:
    assert format_lsn(lsn) == text
    assert parse_lsn(text) == lsn
    assert parse_lsn(text.lower()) == lsn


@pytest.mark.parametrize(
    "text", ["", "16", "16/", "/1", "0x16/1", "1_0/1", "+1/1", "g/1", "123456789/0", "1/2/3"]
)
def test_parse_lsn_rejects_other_text(text: str) -> None:
    with pytest.raises(ValueError, match="not an LSN"):
        parse_lsn(text)


def test_format_lsn_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        format_lsn(-1)
    with pytest.raises(ValueError):
        format_lsn(1 << 64)

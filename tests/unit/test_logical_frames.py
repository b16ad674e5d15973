"""The logical source's transaction assembly, with no server: its one-pass path for Inserts
and Updates (cdc.capture.pgoutput_rows) must give exactly what the general decoder gives, and
leave to it every message it does not fully understand; the safe LSN moves only where the
source may confirm it."""

from __future__ import annotations

import base64
import random
import struct
from types import SimpleNamespace

import pytest

from cdc.bus.events import Change
from cdc.capture.history import Version
from cdc.capture.pgoutput import UNCHANGED, DecodeError, decode
from cdc.capture.pgoutput_rows import read_new_row
from cdc.capture.sources.logical.assembly import TransactionAssembler
from cdc.capture.sources.logical.stream import XLOG_HEADER, keepalive
from tests.unit.test_pgoutput import (
    END_LSN,
    begin,
    commit,
    delete,
    insert,
    message,
    relation,
    truncate,
    tuple_data,
    update,
)

OID = 16384
COLUMNS = [
    (1, "id", 23, -1),
    (0, "name", 25, -1),
    (0, "note", 25, -1),
    (0, "balance", 1700, 786438),
    (0, "updated_at", 1184, -1),
    (0, "active", 16, -1),
]


def assembler() -> TransactionAssembler:
    forgotten: list[str] = []
    assembly = TransactionAssembler(forgotten.append)
    changes: list[Change] = []
    assembly.on_data(relation(OID, "public", "accounts", b"d", COLUMNS), changes)
    assert forgotten == ["public.accounts"]  # the catalog is read again after a Relation
    assembly.on_data(begin(), changes)
    assert changes == []
    return assembly


def through_frames(*payloads: bytes) -> list[Change]:
    assembly, changes = assembler(), []
    for payload in payloads:
        assembly.on_data(payload, changes)
    return changes


def through_decoder(*payloads: bytes) -> list[Change]:
    """The general path alone: decode() then the message handler."""
    assembly, changes = assembler(), []
    for payload in payloads:
        assembly.on_message(decode(payload), changes)
    return changes


ROW = ("7", "Ada", None, "12.50", "2026-11-28 17:45:52.5+00", "t")


def test_an_insert_becomes_its_change() -> None:
    (change,) = through_frames(insert(OID, tuple_data(*ROW)))
    assert change.op == "insert" and change.before is None and change.unchanged == ()
    assert change.after == {
        "id": 7,
        "name": "Ada",
        "note": None,
        "balance": "12.50",
        "updated_at": "2026-11-28T17:45:52.500000Z",
        "active": True,
    }
    assert change.position.endswith(".00000000") and change.identity.endswith(":0")


def test_an_unchanged_toasted_column_is_named_not_published_as_null() -> None:
    (change,) = through_frames(update(OID, tuple_data("7", "Ada", UNCHANGED, "1", "infinity", "f")))
    assert change.op == "update"
    assert change.unchanged == ("note",)
    assert change.after is not None and "note" not in change.after


@pytest.mark.parametrize(
    "payload",
    [
        insert(OID, tuple_data(*ROW)),
        update(OID, tuple_data(*ROW)),
        update(OID, tuple_data(*ROW), old=tuple_data("6", None, None, None, None, None)),
        update(OID, tuple_data(*ROW), old=tuple_data(*ROW), kind=b"O"),
        insert(OID, tuple_data("7", "Ada", b"\x00\xff", "1", "-infinity", "t")),  # a binary value
        delete(OID, tuple_data("7", None, None, None, None, None)),
    ],
)
def test_every_row_message_gives_what_the_general_decoder_gives(payload: bytes) -> None:
    assert through_frames(payload) == through_decoder(payload)


def test_the_one_pass_reader_takes_inserts_and_updates_without_an_old_tuple_only() -> None:
    shapes = {OID: SimpleNamespace(columns=tuple((c[1], str) for c in COLUMNS))}
    taken = read_new_row(update(OID, tuple_data("7", "Ada", UNCHANGED, None, "x", "t")), shapes)
    assert taken is not None
    assert taken[1:] == (
        "update",
        {"id": "7", "name": "Ada", "balance": None, "updated_at": "x", "active": "t"},
        ("note",),
    )
    assert read_new_row(insert(OID, tuple_data(*ROW)), shapes) is not None
    for other in (
        update(OID, tuple_data(*ROW), old=tuple_data(*ROW), kind=b"O"),
        insert(OID, tuple_data("7", "Ada", b"\x00", "1", "x", "t")),
        insert(OID + 1, tuple_data(*ROW)),
        delete(OID, tuple_data("7", None, None, None, None, None)),
        insert(OID, tuple_data(*ROW))[:-1],
        b"I",
        begin(),
    ):
        assert read_new_row(other, shapes) is None


def test_a_binary_value_is_left_to_the_general_path() -> None:
    (change,) = through_frames(
        insert(OID, tuple_data("7", "Ada", b"\x00\xff", "1", "infinity", "t"))
    )
    assert change.after is not None
    assert change.after["note"] == base64.b64encode(b"\x00\xff").decode()


def test_indexes_run_on_across_both_paths() -> None:
    changes = through_frames(
        insert(OID, tuple_data(*ROW)),
        update(OID, tuple_data(*ROW), old=tuple_data(*ROW), kind=b"O"),  # general path
        update(OID, tuple_data(*ROW)),
        commit(),
    )
    assert [c.identity.rsplit(":", 1)[1] for c in changes] == ["0", "1", "2"]
    assert len({c.position for c in changes}) == 3


def test_a_tuple_with_fewer_columns_than_the_relation_is_decoded_as_before() -> None:
    payload = insert(OID, tuple_data("7", "Ada"))
    assert through_frames(payload) == through_decoder(payload)


@pytest.mark.parametrize("cut", [1, 3, 9, 20])
def test_a_truncated_message_raises_the_decoders_error(cut: int) -> None:
    payload = insert(OID, tuple_data(*ROW))[:-cut]
    with pytest.raises(DecodeError, match="Insert"):
        through_frames(payload)


def test_trailing_bytes_raise_the_decoders_error() -> None:
    with pytest.raises(DecodeError, match="trailing"):
        through_frames(insert(OID, tuple_data(*ROW)) + b"x")


def test_a_change_of_an_unknown_relation_fails_as_before() -> None:
    with pytest.raises(KeyError):
        through_frames(insert(OID + 1, tuple_data(*ROW)))


def test_random_tuples_agree_with_the_general_decoder() -> None:
    rng = random.Random(20261128)
    texts = ["", "x", "é ü 字", "a\x01b", "12.5", "2026-11-28 17:45:52+00", "t", "NULL", "0"]
    for _ in range(500):
        values: list[object] = ["1"]
        for _ in COLUMNS[1:]:
            choice = rng.random()
            values.append(
                None if choice < 0.2 else UNCHANGED if choice < 0.3 else rng.choice(texts[:4])
            )
        values[3] = rng.choice([None, "0", "12.50"])
        values[4] = rng.choice([None, "2026-11-28 17:45:52+00", "infinity"])
        values[5] = rng.choice([None, "t", "f"])
        payload = (insert if rng.random() < 0.5 else update)(OID, tuple_data(*values))
        assert through_frames(payload) == through_decoder(payload)


def test_the_safe_lsn_moves_at_a_commit_and_between_transactions_only() -> None:
    assembly, changes = TransactionAssembler(lambda _: None), []
    assembly.restart(100)
    assembly.on_data(relation(OID, "public", "accounts", b"d", COLUMNS), changes)
    assembly.on_data(begin(), changes)
    assembly.on_keepalive(END_LSN + 10)  # inside a transaction: not all of it is here yet
    assembly.on_data(message(False, "cdc.heartbeat", b"x", lsn=END_LSN + 20), changes)
    assembly.on_data(insert(OID, tuple_data(*ROW)), changes)
    assert assembly.safe_lsn == 100
    assembly.on_data(commit(), changes)
    assert assembly.safe_lsn == END_LSN
    assembly.on_keepalive(END_LSN + 30)
    assert assembly.safe_lsn == END_LSN + 30
    assembly.on_data(message(False, "cdc.heartbeat", b"x", lsn=END_LSN + 40), changes)
    assert assembly.safe_lsn == END_LSN + 40
    assembly.on_keepalive(END_LSN + 35)  # never backwards
    assert assembly.safe_lsn == END_LSN + 40 and len(changes) == 1


def test_a_restart_forgets_relations_and_the_open_transaction() -> None:
    assembly, changes = assembler(), []
    assembly.restart(42)
    assert assembly.safe_lsn == 42
    with pytest.raises(AssertionError, match="outside a transaction"):
        assembly.on_data(delete(OID, tuple_data("7", None, None, None, None, None)), changes)
    assembly.on_data(begin(), changes)
    with pytest.raises(KeyError):
        assembly.on_data(insert(OID, tuple_data(*ROW)), changes)


def test_a_watermark_marks_its_place_in_the_read() -> None:
    assembly = assembler()
    changes: list[Change] = []
    assembly.on_data(insert(OID, tuple_data(*ROW)), changes)
    assembly.on_data(message(True, "cdc.watermark", b"token-1"), changes)
    assembly.on_data(insert(OID, tuple_data(*ROW)), changes)
    [mark] = assembly.marks
    assert (mark.index, mark.token) == (1, "token-1")
    assert changes[1].position.startswith(mark.position + ".")


def test_a_keepalive_frame_gives_its_wal_end_and_reply_flag() -> None:
    frame = memoryview(b"k" + struct.pack("!QqB", 0x16B374D848, 5, 1))
    assert keepalive(frame) == (0x16B374D848, True)
    assert XLOG_HEADER == 25  # 'w', WAL start, WAL end, send time


def test_a_change_whose_value_does_not_convert_is_set_aside_with_its_index() -> None:
    assembly, changes = TransactionAssembler(lambda name: None), []
    assembly.on_data(
        relation(OID, "public", "files", b"d", [(1, "id", 23, -1), (0, "b", 17, -1)]), changes
    )
    assembly.on_data(begin(), changes)
    assembly.on_data(insert(OID, tuple_data("1", "\\xZZ")), changes)  # not hex
    assembly.on_data(insert(OID, tuple_data("2", "\\x00ff")), changes)
    [bad] = assembly.unrenderable
    assert bad.change.after == {"id": "1", "b": "\\xZZ"} and bad.change.key_columns == ()
    assert "at position " + bad.change.position in bad.reason and "public.files" in bad.reason
    [good] = changes
    assert good.after == {"id": 2, "b": "AP8="}
    # the set-aside change kept its index: the next one's id is the same as without it
    assert bad.change.position.endswith(".00000000") and good.position.endswith(".00000001")


class Tracker:
    """A schema tracker that records which tables it was asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def track(self, ref: object, message: object, position: str) -> tuple[Version, None]:
        self.asked.append(str(getattr(ref, "qualified", ref)))
        return Version(1, "", {"columns": [], "key": ["id"]}, None), None  # type: ignore[arg-type]


def test_changes_of_tables_outside_cdc_tables_are_dropped_counted_and_keep_their_index() -> None:
    # Given a publication that sends two tables and a worker that publishes one of them
    tracker = Tracker()
    forgotten: list[str] = []
    assembly = TransactionAssembler(forgotten.append, tracker, tracked={"public.accounts"})
    changes: list[Change] = []
    other = OID + 1
    assembly.on_data(begin(), changes)
    assembly.on_data(relation(OID, "public", "accounts", b"d", COLUMNS), changes)
    assembly.on_data(relation(other, "public", "secrets", b"d", COLUMNS), changes)
    # When rows of both change, by every path (one-pass, general decoder, truncate)
    for payload in (
        insert(other, tuple_data(*ROW)),
        insert(OID, tuple_data(*ROW)),
        update(other, tuple_data(*ROW), old=tuple_data(*ROW), kind=b"O"),
        delete(other, tuple_data("7", None, None, None, None, None)),
        truncate(0, other, OID),
        commit(),
    ):
        assembly.on_data(payload, changes)
    # Then only the tracked table's changes come out, at the indexes they would have anyway
    assert [(c.table.qualified, c.op) for c in changes] == [
        ("public.accounts", "insert"),
        ("public.accounts", "truncate"),
    ]
    assert [c.position[-1] for c in changes] == ["1", "5"]
    assert assembly.ignored == 4
    # and the other table took no schema version, nor a catalog read
    assert tracker.asked == ["public.accounts"] and forgotten == ["public.accounts"]
    assert assembly.safe_lsn == END_LSN  # its transaction is passed like any other


def test_a_table_renamed_into_cdc_tables_is_published_from_its_next_relation_message() -> None:
    assembly = TransactionAssembler(lambda _: None, tracked={"public.accounts"})
    changes: list[Change] = []
    assembly.on_data(relation(OID, "public", "old_accounts", b"d", COLUMNS), changes)
    assembly.on_data(begin(), changes)
    assembly.on_data(insert(OID, tuple_data(*ROW)), changes)
    assembly.on_data(relation(OID, "public", "accounts", b"d", COLUMNS), changes)
    assembly.on_data(insert(OID, tuple_data(*ROW)), changes)
    assert [c.position[-1] for c in changes] == ["1"] and assembly.ignored == 1

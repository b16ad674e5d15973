"""The pure part of backfill: snapshots, and how a chunk is woven into a stream batch."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from cdc.bus.events import Change
from cdc.capture.backfill.backfiller import Backfiller
from cdc.capture.backfill.chunks import Pending
from cdc.capture.backfill.pages import key_of
from cdc.capture.backfill.runs import Run
from cdc.capture.catalog import TableInfo
from cdc.capture.dialects.postgresql import Snapshot
from cdc.capture.sources import Batch, Mark
from cdc.core.tables import TableRef

REF = TableRef("public", "accounts")
OTHER = TableRef("public", "other")
NOW = datetime(2026, 11, 28, tzinfo=UTC)
INFO = TableInfo(REF, {}, ("id",), lambda row: row)


def test_a_snapshot_sees_what_committed_before_it() -> None:
    snapshot = Snapshot.parse("100:105:101,103")
    assert snapshot.sees(99) and snapshot.sees(102) and snapshot.sees(104)
    assert not snapshot.sees(101) and not snapshot.sees(103)
    assert not snapshot.sees(105) and not snapshot.sees(200)
    assert Snapshot.parse("7:7:").xip == frozenset()


def test_32_bit_xids_are_placed_in_the_snapshot_epoch() -> None:
    epoch = 3 << 32
    snapshot = Snapshot(epoch + 10, epoch + 20, frozenset({epoch + 15}))
    assert snapshot.sees_xid32(5) and snapshot.sees_xid32(12)
    assert not snapshot.sees_xid32(15) and not snapshot.sees_xid32(25)
    # Just before the epoch turned: an old transaction, visible
    wrapped = Snapshot(epoch + 5, epoch + 8, frozenset())
    assert wrapped.sees_xid32(0xFFFFFFF0)


def change(op: str, key: int, position: str, txid: int, table: TableRef = REF) -> Change:
    image = {"id": key, "v": position}
    return Change(
        table,
        op,
        image if op == "delete" else None,  # type: ignore[arg-type]
        None if op == "delete" else image,
        position,
        txid,
        NOW,
    )


def pending(
    keys: list[int],
    invisible_txids: set[int],
    position: str = "",
    ready: bool = True,
    token: str = "t1",
    full: bool = False,
) -> Pending:
    rows = [{"id": k, "v": "chunk"} for k in keys]
    return Pending(
        Run(7, REF.qualified, None, 1000, None, None),
        INFO,
        rows,
        [key_of(r, ("id",)) for r in rows],
        [str(keys[-1])],
        full,
        lambda c: c.txid in invisible_txids,
        token,
        NOW,
        position=position,
        ready=ready,
    )


def backfiller(mode: Any, chunk: Pending) -> Backfiller:
    filler = Backfiller.__new__(Backfiller)
    filler.mode = mode
    filler.pending = chunk
    filler.runs = [chunk.run]
    filler._recent = {}
    filler._last_xid = None
    return filler


def keys_of(changes: list[Change] | Any) -> list[tuple[str, Any]]:
    return [(c.op, c.after["id"] if c.after else c.before["id"]) for c in changes]


def test_logical_chunk_goes_in_at_its_watermark_without_keys_the_snapshot_missed() -> None:
    chunk = pending([1, 2, 3, 4], invisible_txids={900})
    filler = backfiller("logical", chunk)
    stream = [
        change("update", 2, "000A.00000000", 800),  # seen by the read: keep row 2
        change("update", 3, "000B.00000000", 900),  # not seen: the stream has row 3
        change("delete", 4, "000C.00000000", 900),
        change("update", 1, "000E.00000000", 901),
    ]  # after the watermark
    batch = Batch(stream, marks=[Mark(3, "t1", "000D")])
    woven = list(filler.weave(batch))
    assert keys_of(woven) == [
        ("update", 2),
        ("update", 3),
        ("delete", 4),
        ("read", 1),
        ("read", 2),
        ("update", 1),
    ]
    reads = [c for c in woven if c.op == "read"]
    assert [c.position for c in reads] == ["000D.00000000", "000D.00000001"]
    assert reads[0].identity == "backfill:7:[1]"
    assert chunk.emitted == 2
    # A watermark of another chunk (a crashed run's, streamed again) is not ours
    other = backfiller("logical", pending([1], set(), token="t2"))
    assert keys_of(other.weave(batch)) == keys_of(stream)


def test_changes_of_other_tables_and_earlier_batches_count_too() -> None:
    chunk = pending([1, 2], invisible_txids={5})
    filler = backfiller("logical", chunk)
    first = Batch(
        [
            change("update", 1, "0001.00000000", 5, table=OTHER),
            change("update", 2, "0001.00000001", 5),
        ]
    )
    assert list(filler.weave(first)) == list(first.changes)  # no watermark yet
    woven = filler.weave(Batch([], marks=[Mark(0, "t1", "0002")]))
    assert keys_of(woven) == [("read", 1)]


def test_an_invisible_truncate_leaves_the_whole_chunk_to_the_stream() -> None:
    chunk = pending([1, 2], invisible_txids={5})
    filler = backfiller("logical", chunk)
    truncate = Change(REF, "truncate", None, None, "0001.00000000", 5, NOW)
    woven = filler.weave(Batch([truncate], marks=[Mark(1, "t1", "0002")]))
    assert list(woven) == [truncate]
    assert chunk.emitted == 0


@pytest.mark.parametrize("drained", [True, False])
def test_changelog_chunk_waits_for_a_read_past_its_watermark(drained: bool) -> None:
    watermark = f"{50:020d}"
    chunk = pending([1, 2], invisible_txids={77}, position=watermark)
    filler = backfiller("changelog", chunk)
    late = change("update", 1, f"{40:020d}", 77)  # a lower id that committed late
    batch = Batch([late], drained=drained)
    woven = filler.weave(batch)
    if not drained:
        # Full batch, nothing past the watermark yet: rows below it may still come
        assert list(woven) == [late] and chunk.emitted == -1
        woven = filler.weave(Batch([change("insert", 9, f"{51:020d}", 78)]))
        assert keys_of(woven) == [("read", 2), ("insert", 9)]
    else:
        assert keys_of(woven) == [("update", 1), ("read", 2)]
    assert [c.position for c in woven if c.op == "read"] == [f"{watermark}.00000000"]


def test_changelog_chunk_is_not_emitted_before_its_writers_ended() -> None:
    chunk = pending([1], invisible_txids=set(), position=f"{50:020d}", ready=False)
    filler = backfiller("changelog", chunk)
    assert list(filler.weave(Batch([], drained=True))) == []
    chunk.ready = True
    assert keys_of(filler.weave(Batch([], drained=True))) == [("read", 1)]


def test_a_rate_limited_run_lets_the_worker_sleep() -> None:
    filler = Backfiller.__new__(Backfiller)
    filler.pending = None
    filler.runs = [Run(1, REF.qualified, None, 100, 10.0, None)]
    filler._not_before = {}
    assert filler.busy
    filler._not_before = {1: time.monotonic() + 5}
    assert not filler.busy
    filler.pending = pending([1], set(), ready=False)  # waiting for a long transaction
    assert not filler.busy
    filler.pending.ready = True
    assert filler.busy


def test_progress_whose_store_failed_is_recorded_once_on_retry() -> None:
    chunk = pending([1, 2, 3], set(), full=True)
    chunk.emitted = 3
    filler = backfiller("logical", chunk)
    filler.rows_published = 0
    filler._not_before = {}
    stored: list[tuple[int, int]] = []
    failures = [ConnectionError("lost the connection")]

    def store(run: Run, done: bool) -> None:
        if failures:
            raise failures.pop()
        stored.append((run.rows_done, run.chunks_done))

    filler._store_progress = store  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        filler.acknowledged()
    filler.acknowledged()  # the worker's retry
    assert stored == [(3, 1)] and chunk.run.rows_done == 3 and chunk.run.chunks_done == 1
    assert filler.pending is None and filler.rows_published == 3

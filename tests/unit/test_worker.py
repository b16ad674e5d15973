from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from sqlalchemy import types as sqltypes
from sqlalchemy.exc import OperationalError

from cdc.bus.events import BusEntry, Change
from cdc.bus.publishers import Rejection
from cdc.capture.catalog import TableInfo
from cdc.capture.dialects import capture_of
from cdc.capture.health import WorkerCollector
from cdc.capture.sources import Backlog, Batch
from cdc.capture.values import row_converters
from cdc.capture.worker import Worker, failpoint_hook
from cdc.core.dialects import POSTGRESQL
from cdc.core.errors import Interrupted, SetupError
from cdc.core.settings import load_settings
from cdc.core.tables import TableRef

TABLE = TableRef("public", "orders")
INFO = TableInfo(
    TABLE,
    {"id": sqltypes.INTEGER()},
    ("id",),
    row_converters({"id": sqltypes.INTEGER()}, capture_of(POSTGRESQL))[0],
)


def change(n: int, origin: str = "legacy") -> Change:
    return Change(
        TABLE,
        "insert",
        None,
        {"id": n},
        f"{n:020d}",
        1,
        datetime.now(UTC),
        origin=origin,
        identity=f"changelog:{n}",
    )


class FakeSource:
    waits_for_changes = False

    def __init__(self, batches: list[list[Change]], fail_reads: int = 0) -> None:
        self.batches = batches
        self.fail_reads = fail_reads
        self.acked: list[tuple[list[str], list[str]]] = []
        self.events: list[str] = []
        self.waiting = Backlog()
        self.ignored = 0  # changes of other tables in each batch (logical mode)

    def read(self, limit: int) -> Batch:
        if self.fail_reads:
            self.fail_reads -= 1
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        changes = self.batches.pop(0) if self.batches else []
        self.events.append("read")
        return Batch(
            changes,
            [1] * len(changes),
            max((c.position for c in changes), default=""),
            ignored=self.ignored,
        )

    def ack(self, batch: Batch, rejections: Sequence[Rejection]) -> None:
        self.events.append("ack")
        self.acked.append(
            ([c.position for c in batch.changes], [r.entry.event_id for r in rejections])
        )

    def table(self, name: str) -> TableInfo:
        return INFO

    def backlog(self) -> Backlog:
        return self.waiting

    def close(self) -> None:
        pass


class FakePublisher:
    def __init__(
        self, source: FakeSource, reject_keys: frozenset[int] = frozenset(), interrupt: bool = False
    ) -> None:
        self.source = source
        self.reject_keys = reject_keys
        self.interrupt = interrupt
        self.published: list[BusEntry] = []

    def publish(self, entries: Sequence[BusEntry]) -> list[Rejection]:
        self.source.events.append("publish")
        if self.interrupt:
            raise Interrupted
        self.published.extend(entries)
        return [
            Rejection(e, "too big")
            for e in entries
            if int(e.detail.split('"id":')[-1].split("}")[0]) in self.reject_keys
        ]

    def close(self) -> None:
        pass


SETTINGS = load_settings(
    {
        "CDC_DATABASE_URL": "postgresql://u@h/shop",
        "CDC_TABLES": "orders",
        "CDC_POLL_INTERVAL": "0.01",
    }
)


def test_ack_follows_publish_and_carries_the_dead_letters() -> None:
    source = FakeSource([[change(1), change(2), change(3)]])
    publisher = FakePublisher(source, reject_keys={2})
    worker = Worker(SETTINGS, source, publisher)
    assert worker.step() == 3
    assert source.events == ["read", "publish", "ack"]
    [(positions, rejected)] = source.acked
    assert positions == [f"{n:020d}" for n in (1, 2, 3)]
    assert rejected == [publisher.published[1].event_id]
    assert [e.detail_type for e in publisher.published] == ["public.orders.insert"] * 3
    assert worker.stats.published == 2 and worker.stats.dead_letters == 1


def test_interrupted_publish_is_not_acknowledged() -> None:
    source = FakeSource([[change(1)]])
    worker = Worker(SETTINGS, source, FakePublisher(source, interrupt=True))
    assert worker.step() == 0
    assert source.acked == []


def test_changes_written_by_sync_back_are_acknowledged_not_published() -> None:
    source = FakeSource([[change(1, origin="sync_back"), change(2)]])
    publisher = FakePublisher(source)
    worker = Worker(SETTINGS, source, publisher)
    worker.step()
    assert len(publisher.published) == 1 and len(source.acked[0][0]) == 2
    assert worker.stats.skipped == 1


def test_lost_database_connection_is_retried() -> None:
    source = FakeSource([[change(1)]], fail_reads=2)
    publisher = FakePublisher(source)
    worker = Worker(SETTINGS, source, publisher)
    assert worker.step() == 1
    assert worker.stats.db_retries == 2 and len(publisher.published) == 1


def test_stop_ends_the_loop_after_the_batch_in_hand() -> None:
    source = FakeSource([[change(1)], [change(2)]])
    stop = threading.Event()
    publisher = FakePublisher(source)
    worker = Worker(SETTINGS, source, publisher, stop, on_published=lambda n: stop.set())
    worker.run()
    assert source.events == ["read", "publish", "ack"]


def test_failpoint_spec_is_checked() -> None:
    assert failpoint_hook(None) is None
    with pytest.raises(ValueError, match="unknown failpoint"):
        failpoint_hook("explode")


def backlog_samples(waiting: Backlog) -> dict[str, list[tuple[dict[str, str], float]]]:
    source = FakeSource([])
    source.waiting = waiting
    collector = WorkerCollector(Worker(SETTINGS, source, FakePublisher(source)))
    return {
        f.name: [(s.labels, s.value) for s in f.samples]
        for f in collector.collect()
        if f.name.startswith(("cdc_pending", "cdc_slot"))
    }


def test_backlog_metrics_are_what_the_source_says_waits_in_it() -> None:
    assert backlog_samples(Backlog(pending=3)) == {"cdc_pending_changes": [({}, 3)]}
    slot = Backlog(slot="s1", retained_bytes=70, unconfirmed_bytes=20, wal_keep_size_bytes=100)
    assert backlog_samples(slot) == {
        "cdc_slot_retained_wal_bytes": [({"slot": "s1"}, 70)],
        "cdc_slot_lag_bytes": [({"slot": "s1"}, 20)],
        "cdc_slot_wal_keep_size_bytes": [({"slot": "s1"}, 100)],
    }
    unlimited = backlog_samples(Backlog(slot="s1"))  # max_slot_wal_keep_size = -1
    assert unlimited["cdc_slot_wal_keep_size_bytes"] == [({"slot": "s1"}, -1)]


def test_a_batch_of_only_unconvertible_changes_is_still_acknowledged_as_dead_letters() -> None:
    from cdc.capture.sources import Unrenderable

    class OnlyBad(FakeSource):
        def read(self, limit: int) -> Batch:
            raw = change(9)._replace(key_columns=())
            return Batch([], (), raw.position, 7, unrenderable=[Unrenderable(raw, "bad value")])

    source = OnlyBad([])
    worker = Worker(SETTINGS, source, FakePublisher(source))
    worker.step()
    [(positions, rejected)] = source.acked
    assert positions == [] and len(rejected) == 1
    assert worker.stats.dead_letters == 1


def metric_samples(worker: Worker, name: str) -> list[float]:
    return [s.value for f in WorkerCollector(worker).collect() if f.name == name for s in f.samples]


def test_a_table_not_captured_stops_the_worker_at_start_with_what_to_do() -> None:
    source = FakeSource([[change(1)]])
    gaps = ["table public.orders has no capture triggers (run `cdc setup`)"]
    worker = Worker(SETTINGS, source, FakePublisher(source), coverage=lambda: gaps)
    with pytest.raises(SetupError, match=r"public.orders has no capture triggers.*cdc setup"):
        worker.run()
    assert source.events == []  # never idles as if there were nothing to capture


def test_with_missing_tables_warn_the_others_are_captured_and_metrics_say_what_is_missing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = FakeSource([[change(1)]])
    stop = threading.Event()
    settings = SETTINGS.model_copy(update={"missing_tables": "warn"})
    gaps = ["table public.gone does not exist (check CDC_TABLES: names are schema.table)"]
    worker = Worker(
        settings,
        source,
        FakePublisher(source),
        stop,
        on_published=lambda n: stop.set(),
        coverage=lambda: gaps,
    )
    worker.run()
    assert source.events == ["read", "publish", "ack"]
    assert worker.stats.uncaptured == tuple(gaps)
    assert "public.gone does not exist" in caplog.text
    assert metric_samples(worker, "cdc_uncaptured_tables") == [1]


def test_changes_of_other_tables_the_source_dropped_are_counted() -> None:
    source = FakeSource([[change(1)], []])
    source.ignored = 3
    worker = Worker(SETTINGS, source, FakePublisher(source))
    worker.step()
    worker.step()
    assert worker.stats.ignored == 6
    assert metric_samples(worker, "cdc_changes_ignored") == [6]

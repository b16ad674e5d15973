"""``cdc_lag_seconds`` is how far behind the source the worker is: 0 once a read drains the
source, however long the tables then stay quiet; otherwise the age of the oldest change not yet
acknowledged."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from cdc.bus.events import Change
from cdc.capture.health import WorkerCollector
from cdc.capture.worker import Worker
from cdc.core.settings import load_settings
from tests.unit.test_worker import FakePublisher, FakeSource, change

SETTINGS = load_settings(
    {
        "CDC_DATABASE_URL": "postgresql://u@h/shop",
        "CDC_TABLES": "orders",
        "CDC_BATCH_SIZE": "2",
    }
)


def committed(n: int, seconds_ago: float) -> Change:
    return change(n)._replace(committed_at=datetime.fromtimestamp(time.time() - seconds_ago, UTC))


def test_a_drained_source_is_no_lag_however_long_it_stays_quiet() -> None:
    source = FakeSource([[committed(1, 600)], []])
    worker = Worker(SETTINGS, source, FakePublisher(source))
    assert worker.step() == 1  # one change, old, short of a full batch: the source is drained
    assert worker.stats.lag(time.time()) == 0
    assert worker.step() == 0  # nothing to read
    assert worker.stats.lag(time.time() + 3600) == 0


def test_a_batch_the_bus_holds_up_counts_from_its_oldest_change() -> None:
    source = FakeSource([[committed(1, 120), committed(2, 30)]])
    worker = Worker(SETTINGS, source, FakePublisher(source, interrupt=True))
    assert worker.step() == 0  # published never: the batch stays unacknowledged
    assert 119 < worker.stats.lag(time.time()) < 125
    assert 179 < worker.stats.lag(time.time() + 60) < 185  # and it keeps growing


def test_after_a_full_batch_the_lag_is_its_newest_change_until_a_read_drains() -> None:
    source = FakeSource(
        [[committed(1, 300), committed(2, 200)], [committed(3, 100)], [committed(4, 50)]]
    )
    worker = Worker(SETTINGS, source, FakePublisher(source))
    # A full batch: more may wait, committed no earlier than its last change
    assert worker.step() == 2
    assert 199 < worker.stats.lag(time.time()) < 205
    # A short one: everything the source had is published
    assert worker.step() == 1
    assert worker.stats.lag(time.time()) == 0
    # Caught up, the next change counts from its own commit
    assert worker.step() == 1 and worker.stats.lag(time.time()) == 0


def test_the_gauge_reads_the_lag() -> None:
    source = FakeSource([[committed(1, 90), committed(2, 90)]])
    worker = Worker(SETTINGS, source, FakePublisher(source, interrupt=True))
    families = {f.name: f for f in WorkerCollector(worker).collect()}
    assert families["cdc_lag_seconds"].samples[0].value == 0  # never read: nothing known waits
    worker.step()
    families = {f.name: f for f in WorkerCollector(worker).collect()}
    assert 89 < families["cdc_lag_seconds"].samples[0].value < 95

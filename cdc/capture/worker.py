"""The capture loop: read -> publish -> acknowledge, in that order, until asked to stop.

A stop request (SIGTERM, SIGINT) lets the batch in hand finish: it is published and
acknowledged, then the loop ends. If the bus is failing when the stop arrives, the publisher
gives up waiting and the batch is left unacknowledged: it is read again, with the same event
ids, by the next run. Database errors that a reconnect can cure are retried here.

A table of CDC_TABLES that capture does not cover (``cdc.capture.coverage``) stops the worker at
start-up, or later at its next check, with what to do; with CDC_MISSING_TABLES=warn the worker
captures the others and is not ready (``/readyz``) while the gap lasts.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import Retrying

from cdc.bus.events import BusEntry, Change, EventRenderer
from cdc.bus.publishers import Publisher, Rejection
from cdc.capture.backfill.backfiller import REFRESH_SECONDS, Backfiller
from cdc.capture.coverage import CHECK_SECONDS
from cdc.capture.lease import Lease
from cdc.capture.sources import Batch, Source
from cdc.core.database import db_retrying
from cdc.core.errors import CdcError, Interrupted, SetupError
from cdc.core.settings import Settings
from cdc.core.tables import TableRef

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class WorkerStats:
    batches: int = 0
    changes: int = 0
    published: int = 0
    skipped: int = 0
    dead_letters: int = 0
    db_retries: int = 0
    ignored: int = 0  # logical mode: changes of tables outside CDC_TABLES, dropped
    uncaptured: tuple[str, ...] = ()  # CDC_TABLES not captured (CDC_MISSING_TABLES=warn)
    # wall-clock seconds: the last read that reached the source (0 until one does), and the
    # commit time of the oldest change not yet acknowledged (0: caught up, nothing waits)
    last_read_at: float = 0.0
    behind_since: float = 0.0

    def lag(self, now: float) -> float:
        """Seconds behind the source: 0 when caught up."""
        return max(0.0, now - self.behind_since) if self.behind_since else 0.0

    def reached(self, batch: Batch) -> None:
        """A read returned ``batch``: its first change is the oldest not yet acknowledged;
        an empty read means nothing waits."""
        self.last_read_at = time.time()
        self.behind_since = batch.changes[0].committed_at.timestamp() if batch.changes else 0.0

    def acknowledged(self, batch: Batch, full: bool) -> None:
        """``batch`` is acknowledged. After a full batch more may wait, committed no earlier
        than its last change (about: change-log times are write times); a batch short of full
        drained the source."""
        self.behind_since = (
            batch.changes[-1].committed_at.timestamp() if full and batch.changes else 0.0
        )


@dataclass
class Worker:
    settings: Settings
    source: Source
    publisher: Publisher
    stop: threading.Event = field(default_factory=threading.Event)
    stats: WorkerStats = field(default_factory=WorkerStats)
    on_published: Callable[[int], None] | None = None  # failpoint hook (tests)
    lease: Lease | None = None  # one worker per source: the others wait as standbys
    backfill: Backfiller | None = None  # runs backfills between stream batches
    # The tables of CDC_TABLES that capture does not cover, one line each (cdc.capture.coverage)
    coverage: Callable[[], Sequence[str]] | None = None
    renderer: EventRenderer = field(init=False)
    _db_retrying: Retrying = field(init=False)
    _covered_at: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.renderer = EventRenderer(self.settings.event_source, self.settings.detail_type_for)
        # Built once: a Retrying costs more to make than a small batch costs to acknowledge.
        self._db_retrying = db_retrying(self.stop, self._count_db_retry, "the database")

    def run(self) -> None:
        log.info("capturing from %s to the %s bus", self.settings.display_url, self.settings.bus)
        tune_garbage_collector()
        self._check_coverage()
        if self.lease is not None and not self.lease.acquire(self.stop):
            return
        pause = 0.0 if self.source.waits_for_changes else self.settings.poll_interval
        while not self.stop.is_set():
            if self.lease is not None and not self.lease.still_held():
                raise CdcError(
                    f"lost the lease {self.lease.name} (its database session ended); "
                    "stopping, so that two workers never capture at once"
                )
            if time.monotonic() - self._covered_at >= CHECK_SECONDS:
                self._check_coverage()
            # A full batch means more may be waiting; anything less means the source is
            # drained for now, and waiting a little makes the next batch worth its fixed cost
            # (a stream waits inside ``read`` instead, and returns as soon as changes come).
            if self.step() < self.settings.batch_size and pause and not self._backfilling():
                self._idle(pause)
        log.info("stopped after %d changes in %d batches", self.stats.changes, self.stats.batches)

    def _backfilling(self) -> bool:
        return self.backfill is not None and self.backfill.busy

    def _idle(self, seconds: float) -> None:
        """Wait before polling the drained source again; a backfill registered meanwhile ends
        the wait (it is looked for every ``REFRESH_SECONDS``), whatever the poll interval."""
        backfill = self.backfill
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.stop.wait(min(left, REFRESH_SECONDS)):
                return
            if backfill is not None and self._with_db_retry(backfill.has_work):
                return

    def _check_coverage(self) -> None:
        """Every table of CDC_TABLES exists and is captured, or the operator hears which is
        not: an error that stops the worker, or (CDC_MISSING_TABLES=warn) a warning and
        ``/readyz`` not ready until it is."""
        if self.coverage is None:
            return
        gaps = self._with_db_retry(self.coverage)
        self._covered_at = time.monotonic()
        if gaps is None:  # stopped while the database was unavailable
            return
        if gaps and self.settings.missing_tables == "error":
            raise SetupError(
                "CDC_TABLES names tables whose changes cannot be captured: "
                + "; ".join(gaps)
                + ". Fix them (or CDC_TABLES), or set CDC_MISSING_TABLES=warn to capture the "
                "others meanwhile"
            )
        if gaps:
            log.warning("not captured, so not ready: %s", "; ".join(gaps))
        elif self.stats.uncaptured:
            log.info("every table of CDC_TABLES is captured now")
        self.stats.uncaptured = tuple(gaps)

    def step(self) -> int:
        """One read-publish-ack round; how many changes it acknowledged (0: none to read)."""
        backfill = self.backfill
        if backfill is not None and self._with_db_retry(self._prepare_backfill) is None:
            return 0
        batch = self._with_db_retry(lambda: self.source.read(self.settings.batch_size))
        if batch is None:
            return 0
        self.stats.reached(batch)
        if batch.ignored:
            self.stats.ignored += batch.ignored
        changes = batch.changes if backfill is None else backfill.weave(batch)
        if not changes and not batch.ack_ids and not batch.unrenderable:
            return 0
        acked = self._publish(batch, changes)
        if backfill is not None:
            if acked:
                self._with_db_retry(self._backfill_acknowledged)
            else:
                backfill.forget_pending()
        return len(changes) if acked else 0

    def _prepare_backfill(self) -> bool:
        assert self.backfill is not None
        self.backfill.prepare()
        return True

    def _backfill_acknowledged(self) -> bool:
        assert self.backfill is not None
        self.backfill.acknowledged()
        return True

    def _publish(self, batch: Batch, changes: Sequence[Change]) -> bool:
        """Publish the changes and acknowledge the batch; False when stopped first."""
        # Rendering may read a table's catalog (first sight, or after a schema change).
        entries = self._with_db_retry(lambda: self.entries(changes))
        if entries is None:
            return False
        try:
            rejections = self.publisher.publish(entries) if entries else []
            if batch.unrenderable:
                rejections = rejections + self._unrenderable(batch)
        except Interrupted:
            log.warning(
                "stop requested while the bus was failing; %d changes stay unacknowledged "
                "and will be published again",
                len(changes),
            )
            return False
        self.stats.batches += 1
        if self.on_published is not None:
            self.on_published(self.stats.batches)
        for rejection in rejections:
            log.error(
                "dead letter: event %s of %s: %s",
                rejection.entry.event_id,
                rejection.entry.table,
                rejection.reason,
            )
        acked = self._with_db_retry(lambda: self._ack(batch, rejections))
        if acked is None:
            return False
        self.stats.changes += len(changes)
        self.stats.published += len(entries) - len(rejections)
        self.stats.dead_letters += len(rejections)
        self.stats.acknowledged(batch, len(batch.changes) >= self.settings.batch_size)
        return True

    def _unrenderable(self, batch: Batch) -> list[Rejection]:
        """The changes the source could not convert, as dead letters (raw images, ``key``
        null), so that the stream goes on past them."""
        out: list[Rejection] = []
        for item in batch.unrenderable:
            entries: list[BusEntry] = []
            self.renderer.render_into(entries, item.change, ())
            out.extend(Rejection(entry, item.reason) for entry in entries)
        return out

    def _ack(self, batch: Batch, rejections: Sequence[Rejection]) -> bool:
        self.source.ack(batch, rejections)
        return True

    def entries(self, changes: Sequence[Change]) -> list[BusEntry]:
        skip = self.settings.skip_origins
        table = self.source.table
        render = self.renderer.render_into
        out: list[BusEntry] = []
        ref: TableRef | None = None
        key: tuple[str, ...] = ()
        for change in changes:
            if change.origin in skip:
                # Written by sync back: publishing it would echo the new system's own event.
                self.stats.skipped += 1
                continue
            if change.key_columns is None and change.table != ref:
                # runs of one table: its key is looked up once per run
                ref = change.table
                key = table(ref.qualified).key
            render(out, change, key)
        return out

    def _with_db_retry(self, action: Callable[[], T]) -> T | None:
        """Run ``action``, retrying lost connections with backoff; None when stopped meanwhile."""
        try:
            return self._db_retrying(action)
        except Interrupted:
            return None

    def _count_db_retry(self) -> None:
        self.stats.db_retries += 1


def tune_garbage_collector() -> None:
    """A batch allocates a few dicts per change, all freed by reference counting; with the
    default thresholds the cycle collector still runs every 700 allocations and rescans the
    batch in hand (a tenth of the capture's time, measured). Objects made at start-up are
    frozen out of its sight, and young collections are made rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def failpoint_hook(spec: str | None) -> Callable[[int], None] | None:
    """``kill_after_publish:N``: SIGKILL this process after the N-th batch was published and
    before it is acknowledged (the crash tests use it to prove re-publication)."""
    if not spec:
        return None
    name, _, arg = spec.partition(":")
    if name != "kill_after_publish" or not arg.isdigit():
        raise ValueError(f"unknown failpoint {spec!r}")
    target = int(arg)

    def hook(batches: int) -> None:
        if batches >= target:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook

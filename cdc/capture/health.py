"""Health and metrics over HTTP for the capture worker and the sync-back consumer:
``/healthz`` (the process answers), ``/readyz`` (the worker reached its source recently; the
consumer reached its queue recently) and ``/metrics`` (Prometheus).

Metrics are read from the worker's and the publisher's counters (or the consumer's) when
scraped, so the loops pay nothing for them. The server runs in a daemon thread beside the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cdc.capture.worker import Worker
from cdc.core.health import serve_endpoints

log = logging.getLogger(__name__)


class WorkerCollector(Collector):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Any]:
        stats = self.worker.stats
        table = self.worker.settings.capture
        for name, help_text, value in (
            ("cdc_changes_captured", "changes read and acknowledged", stats.changes),
            ("cdc_events_published", "events the bus accepted", stats.published),
            (
                "cdc_changes_skipped",
                "changes not published (their origin is skipped)",
                stats.skipped,
            ),
            ("cdc_dead_letters", "events the bus can never accept", stats.dead_letters),
            ("cdc_batches", "batches acknowledged", stats.batches),
            ("cdc_database_retries", "database operations retried", stats.db_retries),
            (
                "cdc_changes_ignored",
                "changes of tables outside CDC_TABLES that the stream carried, dropped",
                stats.ignored,
            ),
        ):
            counter = CounterMetricFamily(name, help_text, labels=["capture"])
            counter.add_metric([table], value)
            yield counter
        publisher_stats = getattr(self.worker.publisher, "stats", None)
        retries = getattr(publisher_stats, "retries_by_code", None)
        if retries is not None:
            counter = CounterMetricFamily(
                "cdc_publish_retries", "entries sent again, by error code", labels=["code"]
            )
            for code, count in sorted(retries.items()):
                counter.add_metric([code], count)
            yield counter
        lag = GaugeMetricFamily(
            "cdc_lag_seconds",
            "how far behind the source capture is: 0 when the last read drained it (fewer "
            "changes than a full batch), else now minus the commit time of the oldest change "
            "not yet acknowledged",
        )
        lag.add_metric([], stats.lag(time.time()))
        yield lag
        last = GaugeMetricFamily(
            "cdc_last_read_timestamp_seconds", "when the worker last reached its source"
        )
        last.add_metric([], stats.last_read_at)
        yield last
        uncaptured = GaugeMetricFamily(
            "cdc_uncaptured_tables",
            "tables of CDC_TABLES that do not exist or are not captured (CDC_MISSING_TABLES=warn)",
        )
        uncaptured.add_metric([], len(stats.uncaptured))
        yield uncaptured
        yield from self._backfill()
        yield from self._backlog()

    def _backfill(self) -> Iterator[Any]:
        filler = self.worker.backfill
        if filler is None:
            return
        published = CounterMetricFamily(
            "cdc_backfill_rows_published", "rows published by backfills ('read' events)"
        )
        published.add_metric([], filler.rows_published)
        yield published
        done = GaugeMetricFamily(
            "cdc_backfill_rows_done",
            "rows done by each running backfill",
            labels=["table", "backfill"],
        )
        total = GaugeMetricFamily(
            "cdc_backfill_rows_total",
            "rows to do by each running backfill (counted at its start)",
            labels=["table", "backfill"],
        )
        for run in list(filler.runs):
            labels = [run.table, str(run.id)]
            done.add_metric(labels, run.rows_done)
            total.add_metric(labels, run.rows_total or 0)
        yield done
        yield total

    def _backlog(self) -> Iterator[Any]:
        """What waits in the source, read from the database at scrape time (skipped, with a
        debug line, when the database does not answer: /readyz tells that story)."""
        try:
            backlog = self.worker.source.backlog()
        except Exception as exc:
            log.debug("backlog metrics skipped: %s", exc)
            return
        if backlog.pending is not None:
            pending = GaugeMetricFamily("cdc_pending_changes", "change-log rows not yet published")
            pending.add_metric([], backlog.pending)
            yield pending
        if backlog.slot is not None:
            retained = GaugeMetricFamily(
                "cdc_slot_retained_wal_bytes",
                "WAL the replication slot holds back (current LSN minus its restart LSN)",
                labels=["slot"],
            )
            retained.add_metric([backlog.slot], backlog.retained_bytes)
            yield retained
            behind = GaugeMetricFamily(
                "cdc_slot_lag_bytes",
                "WAL not yet confirmed as published (current LSN "
                "minus the slot's confirmed flush LSN)",
                labels=["slot"],
            )
            behind.add_metric([backlog.slot], backlog.unconfirmed_bytes)
            yield behind
            limit = GaugeMetricFamily(
                "cdc_slot_wal_keep_size_bytes",
                "the most WAL the slot may hold back before PostgreSQL invalidates it "
                "(max_slot_wal_keep_size in bytes; -1: unlimited)",
                labels=["slot"],
            )
            limit.add_metric([backlog.slot], backlog.wal_keep_size_bytes)
            yield limit


def serve(worker: Worker, port: int, ready_within: float = 30.0) -> ThreadingHTTPServer:
    """Start the worker's endpoints on ``port`` (0: any free port) in a daemon thread; not
    ready while a table of CDC_TABLES is not captured."""
    stats = worker.stats
    return serve_endpoints(
        WorkerCollector(worker),
        lambda: 0.0 if stats.uncaptured else stats.last_read_at,
        port,
        ready_within,
    )

"""Health and metrics of the sync-back consumer (the server is ``cdc.core.health``)."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cdc.core.health import serve_endpoints
from sync_back.consumer import Consumer


class ConsumerCollector(Collector):
    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    def collect(self) -> Iterator[Any]:
        stats = self.consumer.stats
        for name, help_text, value in (
            ("sync_back_messages_received", "SQS messages received", stats.received),
            ("sync_back_applied", "events written to the legacy tables", stats.applied),
            (
                "sync_back_duplicates",
                "events already in the inbox (redelivered), not applied again",
                stats.duplicates,
            ),
            (
                "sync_back_conflicts",
                "events not applied because the legacy application changed "
                "the row since sync back wrote it (skipped by legacy_wins or parked)",
                stats.conflicts,
            ),
            ("sync_back_parked", "events parked in the conflicts table for a person", stats.parked),
            ("sync_back_stale", "events older than the legacy row, not applied", stats.stale),
            (
                "sync_back_own_events",
                "events of this service's own capture, ignored",
                stats.own_events,
            ),
            ("sync_back_dead_letters", "messages that could not be applied", stats.dead_letters),
            (
                "sync_back_undeleted",
                "applied messages left to come back from the queue",
                stats.undeleted,
            ),
            ("sync_back_database_retries", "database operations retried", stats.db_retries),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], value)
            yield counter
        retries = CounterMetricFamily(
            "sync_back_queue_retries",
            "SQS calls (or batch entries) that failed and were tried again, by error code",
            labels=["code"],
        )
        for code, count in sorted(stats.queue_retries_by_code.items()):
            retries.add_metric([code], count)
        yield retries
        last = GaugeMetricFamily(
            "sync_back_last_poll_timestamp_seconds",
            "when the consumer last received from its queue",
        )
        last.add_metric([], stats.last_polled_at)
        yield last


def serve_consumer(
    consumer: Consumer, port: int, ready_within: float = 30.0
) -> ThreadingHTTPServer:
    """Start the sync-back consumer's endpoints. It is ready while its queue answers: a long
    poll waits at most 20 seconds, and a consumer stuck on an unavailable legacy database stops
    polling, so it turns not ready too."""
    return serve_endpoints(
        ConsumerCollector(consumer), lambda: consumer.stats.last_polled_at, port, ready_within
    )

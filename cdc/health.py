"""Health and metrics over HTTP for the capture worker: ``/healthz`` (the process answers),
``/readyz`` (the worker reached its source recently) and ``/metrics`` (Prometheus).

Metrics are read from the worker's and the publisher's counters when scraped, so the capture
loop pays nothing for them. The server runs in a daemon thread beside the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cdc.worker import Worker

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
            ("cdc_changes_skipped", "changes not published (their origin is skipped)", stats.skipped),
            ("cdc_dead_letters", "events the bus can never accept", stats.dead_letters),
            ("cdc_batches", "batches acknowledged", stats.batches),
            ("cdc_database_retries", "database operations retried", stats.db_retries),
        ):
            counter = CounterMetricFamily(name, help_text, labels=["capture"])
            counter.add_metric([table], value)
            yield counter
        publisher_stats = getattr(self.worker.publisher, "stats", None)
        retries = getattr(publisher_stats, "retries_by_code", None)
        if retries is not None:
            counter = CounterMetricFamily("cdc_publish_retries", "entries sent again, by error code",
                                          labels=["code"])
            for code, count in sorted(retries.items()):
                counter.add_metric([code], count)
            yield counter
        lag = GaugeMetricFamily("cdc_lag_seconds",
                                "now minus the commit time of the newest acknowledged change")
        lag.add_metric([], time.time() - stats.last_committed_at if stats.last_committed_at else 0.0)
        yield lag
        last = GaugeMetricFamily("cdc_last_read_timestamp_seconds",
                                 "when the worker last reached its source")
        last.add_metric([], stats.last_read_at)
        yield last


def serve(worker: Worker, port: int, ready_within: float = 30.0) -> ThreadingHTTPServer:
    """Start the endpoints on ``port`` (0: any free port) in a daemon thread."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(worker))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif self.path == "/readyz":
                fresh = time.time() - worker.stats.last_read_at < ready_within
                self._send(200 if fresh else 503, b"ready\n" if fresh else b"not ready\n",
                           "text/plain")
            elif self.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one log line per scrape would drown the worker's own

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    log.info("health and metrics on port %d", server.server_address[1])
    return server

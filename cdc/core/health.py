"""Health and metrics over HTTP, for every long-running process: ``/healthz`` (the process
answers), ``/readyz`` (it reached what it works on recently) and ``/metrics`` (Prometheus, from
the collector the process gives). The server runs in a daemon thread beside the loop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# The endpoints, for probes to name (the image's HEALTHCHECK, deploy/compose.yaml).
HEALTHZ, READYZ, METRICS = "/healthz", "/readyz", "/metrics"


def serve_endpoints(
    collector: Collector, last_reached: Callable[[], float], port: int, ready_within: float = 30.0
) -> ThreadingHTTPServer:
    """``/healthz``, ``/readyz`` (``last_reached`` is within ``ready_within`` seconds) and
    ``/metrics`` (from ``collector``) on ``port`` (0: any free port), in a daemon thread."""
    registry = CollectorRegistry()
    registry.register(collector)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == HEALTHZ:
                self._send(200, b"ok\n", "text/plain")
            elif self.path == READYZ:
                fresh = time.time() - last_reached() < ready_within
                self._send(
                    200 if fresh else 503, b"ready\n" if fresh else b"not ready\n", "text/plain"
                )
            elif self.path == METRICS:
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

"""Latency from commit to the bus accepting the event, at a steady rate of changes.

A writer commits single-row updates at a fixed rate (default 1,000 changes/s for 20 s) while
the worker (``Worker.run`` in a thread, ``logical`` mode by default) publishes to moto's
EventBridge (its own process, a custom bus, no rules). Each entry's latency is the moment
``PutEvents`` returned for it minus its commit time as PostgreSQL recorded it (both clocks are
this machine's). Prints p50, p99 and the maximum; targets: p50 under 20 ms, p99 under 100 ms.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections.abc import Sequence

import boto3
import psycopg
from common import LEGACY_TABLE, _insert_rows, capture_settings, libpq, prepare, scratch_database
from eventbridge_e2e import moto_server

from cdc.app import open_source
from cdc.bus.events import BusEntry
from cdc.bus.publishers import Publisher, Rejection
from cdc.bus.publishers.eventbridge import EventBridgePublisher
from cdc.capture import slots
from cdc.capture.catalog import read_table
from cdc.capture.worker import Worker


class Timed:
    """A publisher that notes, for every accepted entry, how long after its commit it went."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self.latencies: list[float] = []

    def publish(self, entries: Sequence[BusEntry]) -> list[Rejection]:
        rejected = self.inner.publish(entries)
        now = time.time()
        refused = {r.entry.event_id for r in rejected}
        self.latencies.extend(
            now - e.time.timestamp() for e in entries if e.event_id not in refused
        )
        return rejected

    def close(self) -> None:
        self.inner.close()


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="changes/s (default 1000)")
    parser.add_argument("--seconds", type=float, default=20, help="writing time (default 20)")
    parser.add_argument("--capture", choices=["logical", "changelog"], default="logical")
    args = parser.parse_args()
    total = int(args.rate * args.seconds)

    with moto_server() as endpoint, scratch_database() as url:
        bus = f"cdc-latency-{uuid.uuid4().hex[:8]}"
        boto3.client("events").create_event_bus(Name=bus)
        settings = capture_settings(
            url,
            capture=args.capture,
            bus="eventbridge",
            event_bus_name=bus,
            slot_name=f"latency_{url.database}",
        )
        engine = prepare(settings, with_triggers=args.capture == "changelog")
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")  # no capture of the seed
            conn.execute(_insert_rows(1, 1000))
        if args.capture == "logical":
            slots.install(
                engine,
                [read_table(engine, t) for t in settings.table_refs],
                settings.slot_name,
                settings.publication_name,
            )
        stop = threading.Event()
        publisher = Timed(
            EventBridgePublisher.from_environment(
                bus, concurrency=settings.publish_concurrency, stop=stop
            )
        )
        worker = Worker(settings, open_source(settings, engine), publisher, stop)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            time.sleep(1.0)  # connected and streaming before the clock starts
            behind = 0.0
            with psycopg.connect(libpq(url), autocommit=True) as conn:
                started = time.monotonic()
                for i in range(total):
                    due = started + i / args.rate
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    else:
                        behind = max(behind, -wait)
                    conn.execute(
                        f"UPDATE {LEGACY_TABLE} SET balance = balance + 1 WHERE id = %s",
                        (i % 1000 + 1,),
                    )
                written = time.monotonic() - started
            deadline = time.monotonic() + 60
            while len(publisher.latencies) < total and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(30)
            publisher.close()
            worker.source.close()  # ends the replication connection, so the slot can go
            if args.capture == "logical":
                slots.drop(engine, settings.slot_name, settings.publication_name)
            engine.dispose()

    latencies = [x * 1000 for x in publisher.latencies]
    if len(latencies) < total:
        raise SystemExit(f"only {len(latencies)} of {total} changes were accepted")
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    print(
        f"latency, commit to bus acceptance: {args.capture} mode, {total:,} single-row "
        f"transactions at {args.rate:,}/s for {args.seconds:g}s (written in {written:.1f}s, "
        f"writer at most {behind * 1000:.0f} ms behind schedule), moto at {endpoint}"
    )
    print(
        f"  {len(latencies):,} events in {worker.stats.batches:,} batches; "
        f"mean {statistics.fmean(latencies):.1f} ms"
    )
    print(
        f"  p50 {p50:.1f} ms (target < 20: {'PASS' if p50 < 20 else 'MISS'}), "
        f"p99 {p99:.1f} ms (target < 100: {'PASS' if p99 < 100 else 'MISS'}), "
        f"max {max(latencies):.1f} ms"
    )


if __name__ == "__main__":
    main()

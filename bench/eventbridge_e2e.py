"""EventBridge end to end: changes/s from the change log into moto's EventBridge (a custom bus
with no rules) through the worker and EventBridgePublisher, divided by bare ``put_events``
calls (10 entries each) of the very same entries, ready-made, against the same server.

moto's server runs in its own process (moto_server on a free 127.0.0.1 port); boto3 finds
it through AWS_ENDPOINT_URL, with dummy credentials, as in tests/conftest.py. Target: the
worker reaches at least 0.9 of the bare calls' rate.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import botocore.config
from common import (
    Figure,
    capture_settings,
    changelog_count,
    fill_changelog,
    median,
    new_worker,
    prepare,
    print_table,
    scratch_database,
    timed,
)
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from cdc.bus.events import BusEntry
from cdc.bus.publishers.eventbridge import EventBridgePublisher
from cdc.bus.publishers.file import NullPublisher
from cdc.capture.worker import tune_garbage_collector
from cdc.core.limits import PUT_EVENTS_MAX_ENTRIES
from cdc.core.settings import Settings

TARGET_RATIO = 0.9
AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's server on 127.0.0.1 in a process of its own (in this process it would share the
    interpreter lock with the worker it serves), with the AWS_* variables pointing boto3 at it."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit("moto_server did not start")
        time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {name: os.environ.get(name) for name in AWS_VARIABLES}
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    try:
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def bare_client() -> Any:
    # The publisher's own client configuration, so only the pipeline differs.
    config = botocore.config.Config(
        retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30
    )
    return boto3.client("events", config=config)


def ready_entries(settings: Settings, engine: Engine, changes: int) -> list[BusEntry]:
    """The entries the worker will send for the current change log, read without acking."""
    worker = new_worker(settings, engine, NullPublisher())
    batch = worker.source.read(changes)
    if len(batch.changes) != changes:
        raise SystemExit(f"read {len(batch.changes)} changes, expected {changes}")
    return worker.entries(batch.changes)


def request(entry: BusEntry, bus: str) -> dict[str, Any]:
    return {
        "Time": entry.time,
        "Source": entry.source,
        "DetailType": entry.detail_type,
        "Detail": entry.detail,
        "EventBusName": bus,
    }


def bare_put_events(entries: Sequence[BusEntry], bus: str) -> float:
    """Seconds for plain put_events calls of ten ready-made entries each."""
    client = bare_client()
    calls = [
        [request(e, bus) for e in entries[i : i + PUT_EVENTS_MAX_ENTRIES]]
        for i in range(0, len(entries), PUT_EVENTS_MAX_ENTRIES)
    ]
    client.put_events(Entries=calls[0][:1])  # connect outside the timing
    failed = 0

    def send() -> None:
        nonlocal failed
        for call in calls:
            failed += client.put_events(Entries=call)["FailedEntryCount"]

    seconds = timed(send)
    client.close()
    if failed:
        raise SystemExit(f"moto refused {failed} entries of the bare calls")
    return seconds


def worker_drain(settings: Settings, engine: Engine, warm: BusEntry, expected: int) -> float:
    """Seconds for ``Worker.step()`` to publish the whole change log to the bus."""
    publisher = EventBridgePublisher.from_environment(
        settings.event_bus_name, settings.max_entry_bytes, concurrency=settings.publish_concurrency
    )
    worker = new_worker(settings, engine, publisher)
    publisher.publish([warm])  # connect outside the timing
    tune_garbage_collector()  # as Worker.run() does
    accepted_before = publisher.stats.entries_accepted

    def drain() -> None:
        while worker.step():
            pass

    seconds = timed(drain)
    publisher.close()
    accepted = publisher.stats.entries_accepted - accepted_before
    if worker.stats.changes != expected or accepted != expected or publisher.stats.rejected:
        raise SystemExit(
            f"worker published {accepted} of {expected} changes "
            f"({publisher.stats.rejected} rejected)"
        )
    return seconds


def run_round(
    url: URL, settings: Settings, engine: Engine, changes: int, worker_first: bool
) -> tuple[float, float]:
    fill_changelog(url, changes)
    entries = ready_entries(settings, engine, changes)
    if worker_first:
        worker_seconds = worker_drain(settings, engine, entries[0], changes)
        bare_seconds = bare_put_events(entries, settings.event_bus_name)
    else:
        bare_seconds = bare_put_events(entries, settings.event_bus_name)
        worker_seconds = worker_drain(settings, engine, entries[0], changes)
    if changelog_count(url):
        raise SystemExit("the change log is not empty after the worker's run")
    return changes / bare_seconds, changes / worker_seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--changes", type=int, default=5_000, help="change-log rows per run (default 5000)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=500,
        help="the worker's batch size, CDC_BATCH_SIZE (default 500)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="bare/worker pairs, in alternating order; medians are reported (default 3)",
    )
    args = parser.parse_args()

    bare: list[float] = []
    captured: list[float] = []
    with moto_server() as endpoint, scratch_database() as url:
        bus = f"cdc-bench-{uuid.uuid4().hex[:8]}"
        boto3.client("events").create_event_bus(Name=bus)
        settings = capture_settings(
            url, bus="eventbridge", event_bus_name=bus, batch_size=str(args.batch_size)
        )
        engine = prepare(settings)
        try:
            print(
                f"eventbridge end to end: {args.changes:,} changes per run into bus {bus} "
                f"on moto at {endpoint}, worker batch {args.batch_size}, "
                f"{args.rounds} round(s)"
            )
            for round_number in range(args.rounds):
                b, c = run_round(
                    url, settings, engine, args.changes, worker_first=round_number % 2 == 1
                )
                bare.append(b)
                captured.append(c)
                print(
                    f"  round {round_number + 1}: bare put_events {b:,.0f} /s, "
                    f"worker {c:,.0f} /s, ratio {c / b:.2f}"
                )
        finally:
            engine.dispose()
    print_table(
        "changes/s into EventBridge (moto), worker vs bare put_events of the same "
        "entries (median of rounds)",
        [
            Figure(
                "worker -> EventBridgePublisher",
                median(captured),
                median(bare),
                "changes/s",
                None,
                TARGET_RATIO,
            ),
        ],
    )


if __name__ == "__main__":
    main()

"""Sync back throughput: events/s applied from an SQS queue (moto) into PostgreSQL by the real
consumer, ``Consumer.poll_once()`` driven until every event was applied, divided by a bare
receive-and-delete loop on the same queue (``receive_message`` of 10, ``WaitTimeSeconds=0``,
then ``delete_message_batch``): the ceiling the queue itself sets.

Before each side the queue is filled with the very same ready-made EventBridge-envelope bodies
(OrderPlaced upserts of distinct order ids) with ``send_message_batch``, and the legacy table,
the inbox and the synced-rows table are emptied. moto's server runs in its own process on a
free 127.0.0.1 port. Target: the consumer reaches at least 0.7 of the bare loop's rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import psycopg
from common import (
    Figure,
    capture_settings,
    install_triggers,
    libpq,
    median,
    print_table,
    scratch_database,
)
from eventbridge_e2e import moto_server
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import URL

from cdc import database
from cdc.settings import Settings
from cdc.state import state_tables
from sync_back.consumer import Consumer
from sync_back.mapping import load_mappings

TARGET_RATIO = 0.7
SIDE_TIMEOUT = 60.0  # seconds; either side draining N events slower than this is a failure

# The legacy table and mapping of tests/integration/test_sync_back.py (newer_wins upserts).
ORDERS_TABLE = "public.orders"
ORDERS_DDL = ("CREATE TABLE public.orders (id int PRIMARY KEY, total numeric(10,2) NOT NULL, "
              "customer text, updated_at timestamptz NOT NULL, note text)")
MAPPING = """
[[sync_back.mappings]]
detail_type = "OrderPlaced"
source = "shop.orders"
table = "orders"
op = "upsert"
key = ["id"]
version_column = "updated_at"
conflict = "newer_wins"
root = "order"
[sync_back.mappings.columns]
id = { path = "id", type = "int" }
total = { path = "total", type = "numeric" }
customer = { path = "customer.name", type = "text", max_length = 200 }
updated_at = { path = "updated_at", type = "timestamptz" }
note = { path = "note", type = "text", required = false }
"""


def bodies(events: int) -> list[str]:
    """SQS bodies as an EventBridge rule delivers them: one OrderPlaced per order id."""
    out = []
    for order_id in range(1, events + 1):
        detail = {"id": str(uuid.uuid4()),
                  "order": {"id": order_id, "total": f"{order_id % 1000}.{order_id % 100:02d}",
                            "customer": {"name": f"customer {order_id}"},
                            "updated_at": f"2026-11-28T{order_id % 24:02d}:00:00Z",
                            "note": "bench"}}
        out.append(json.dumps({
            "version": "0", "id": str(uuid.uuid4()), "detail-type": "OrderPlaced",
            "source": "shop.orders", "account": "123456789012", "time": "2026-11-28T12:00:00Z",
            "region": "us-east-1", "resources": [], "detail": detail}))
    return out


# -- setup and checks ----------------------------------------------------------------------


def prepare_orders(settings: Settings) -> Engine:
    """The legacy table, the state schema, and the capture triggers on the table (changelog
    mode, as deployed: sync back's writes are captured, tagged with their origin)."""
    engine = database.connect(settings)
    with engine.begin() as connection:
        connection.execute(text(ORDERS_DDL))
    database.migrate(engine, settings)
    install_triggers(settings, engine)
    return engine


def reset_database(url: URL, schema: str) -> None:
    """Empty the legacy table and what sync back and capture keep about it, identically
    before every side."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")  # silences triggers
            conn.execute(f"TRUNCATE {ORDERS_TABLE}, {schema}.inbox, {schema}.synced_rows, "
                         f"{schema}.changelog RESTART IDENTITY")
        for table in (ORDERS_TABLE, f"{schema}.inbox", f"{schema}.synced_rows",
                      f"{schema}.changelog"):
            conn.execute(f"VACUUM ANALYZE {table}")


def database_counts(url: URL, schema: str) -> tuple[int, int, int, int]:
    """Legacy rows, inbox entries, inbox entries applied, change-log rows."""
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(
            f"SELECT (SELECT count(*) FROM {ORDERS_TABLE}), (SELECT count(*) FROM {schema}.inbox),"
            f" (SELECT count(*) FROM {schema}.inbox WHERE outcome = 'applied'),"
            f" (SELECT count(*) FROM {schema}.changelog)").fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def fill_queue(sqs: Any, queue: str, messages: list[str]) -> None:
    for start in range(0, len(messages), 10):
        reply = sqs.send_message_batch(QueueUrl=queue, Entries=[
            {"Id": str(i), "MessageBody": body}
            for i, body in enumerate(messages[start:start + 10])])
        if reply.get("Failed"):
            raise SystemExit(f"moto refused messages: {reply['Failed'][:3]}")


def queue_depth(sqs: Any, queue: str) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return (int(attributes["ApproximateNumberOfMessages"])
            + int(attributes["ApproximateNumberOfMessagesNotVisible"]))


# -- the consumer's breakdown --------------------------------------------------------------


@dataclass
class Clock:
    """Seconds and calls per part of the consumer's work."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1
        return timed_call

    def add(self, other: Clock) -> None:
        for name, seconds in other.seconds.items():
            self.seconds[name] += seconds
            self.calls[name] += other.calls[name]


class TimedSqs:
    """The consumer's boto3 client with each call's duration noted under ``sqs <operation>``."""

    def __init__(self, client: Any, clock: Clock) -> None:
        self._client = client
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return self._clock.wrap(f"sqs {name}", getattr(self._client, name))


@contextmanager
def statement_clock(engine: Engine, clock: Clock) -> Iterator[None]:
    """Time in ``cursor.execute`` (driver and server round trip) of the engine's statements."""
    started: list[float] = []

    def before(*_args: Any) -> None:
        started.append(time.perf_counter())

    def after(*_args: Any) -> None:
        clock.seconds["db statements"] += time.perf_counter() - started.pop()
        clock.calls["db statements"] += 1

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


# -- the two sides -------------------------------------------------------------------------


def consumer_drain(settings: Settings, engine: Engine, queue: str, events: int,
                   clock: Clock | None) -> float:
    """Seconds for ``Consumer.poll_once()`` to apply ``events`` events from the queue."""
    sqs: Any = boto3.client("sqs")  # as sync_back.cli builds it
    sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])  # warm, untimed
    if clock is not None:
        sqs = TimedSqs(sqs, clock)
    # Reflects the legacy table (check_columns), so the pool holds a connection already.
    consumer = Consumer(settings, engine, state_tables("postgresql", settings.state_schema),
                        load_mappings(settings.sync_back, settings.default_schema), sqs)
    if clock is not None:
        consumer.applier.apply = clock.wrap("Applier.apply", consumer.applier.apply)  # type: ignore[method-assign]
    deadline = time.monotonic() + SIDE_TIMEOUT

    def drain() -> None:
        while consumer.stats.applied < events:
            if consumer.stats.received > events or time.monotonic() > deadline:
                break
            consumer.poll_once()

    with statement_clock(engine, clock) if clock is not None else _nothing():
        started = time.perf_counter()
        drain()
        seconds = time.perf_counter() - started
    stats = consumer.stats
    if stats.applied != events or stats.received != events:
        raise SystemExit(f"the consumer applied {stats.applied} of {events} events "
                         f"({stats})")
    return seconds


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def bare_drain(queue: str, events: int) -> float:
    """Seconds for a plain receive (10, no wait) and delete_message_batch loop over ``events``
    messages."""
    sqs = boto3.client("sqs")
    sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])  # warm, untimed
    received = 0
    deadline = time.monotonic() + SIDE_TIMEOUT

    def drain() -> None:
        nonlocal received
        while received < events and time.monotonic() < deadline:
            messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=0).get("Messages", [])
            if messages:
                sqs.delete_message_batch(QueueUrl=queue, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)])
                received += len(messages)

    started = time.perf_counter()
    drain()
    seconds = time.perf_counter() - started
    if received != events:
        raise SystemExit(f"the bare loop received {received} of {events} messages")
    return seconds


@dataclass
class Run:
    settings: Settings
    engine: Engine
    url: URL
    queue: str
    sqs: Any
    messages: list[str]

    def side(self, which: str, clock: Clock | None) -> float:
        events = len(self.messages)
        schema = self.settings.state_schema
        reset_database(self.url, schema)
        if queue_depth(self.sqs, self.queue):
            raise SystemExit("the queue is not empty before a run")
        fill_queue(self.sqs, self.queue, self.messages)
        if which == "consumer":
            seconds = consumer_drain(self.settings, self.engine, self.queue, events, clock)
            legacy, inbox, applied, _ = database_counts(self.url, schema)
            if (legacy, inbox, applied) != (events, events, events):
                raise SystemExit(f"after the consumer: {legacy} legacy rows, {inbox} inbox "
                                 f"entries ({applied} applied), expected {events}")
        else:
            seconds = bare_drain(self.queue, events)
        depth = queue_depth(self.sqs, self.queue)
        if depth:
            raise SystemExit(f"{depth} messages left on the queue after the {which} side")
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000,
                        help="events (SQS messages) per run (default 2000; moto slows down as "
                             "a queue fills, so keep it modest)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="bare/consumer pairs, in alternating order; medians are reported "
                             "(default 2)")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="do not time the consumer's SQS calls and statements")
    args = parser.parse_args()
    events = args.events

    bare: list[float] = []
    consumed: list[float] = []
    clock = Clock()
    with (moto_server() as endpoint, scratch_database() as url,
          tempfile.TemporaryDirectory() as scratch):
        sqs = boto3.client("sqs")
        queue = sqs.create_queue(QueueName=f"cdc-bench-sync-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        config = Path(scratch) / "cdc.toml"
        config.write_text(MAPPING)
        settings = capture_settings(url, tables=ORDERS_TABLE, config=str(config),
                                    sync_queue_url=queue, sync_wait_seconds="0")
        engine = prepare_orders(settings)
        try:
            run = Run(settings, engine, url, queue, sqs, bodies(events))
            print(f"sync back throughput: {events:,} OrderPlaced events per run from queue "
                  f"{queue.rsplit('/', 1)[-1]} on moto at {endpoint} into {ORDERS_TABLE} "
                  f"(capture triggers on), {args.rounds} round(s)")
            for round_number in range(args.rounds):
                order = ["consumer", "bare"] if round_number % 2 else ["bare", "consumer"]
                seconds: dict[str, float] = {}
                for which in order:
                    round_clock = None if args.no_breakdown else Clock()
                    seconds[which] = run.side(which, round_clock)
                    if round_clock is not None:
                        clock.add(round_clock)
                b, c = events / seconds["bare"], events / seconds["consumer"]
                bare.append(b)
                consumed.append(c)
                print(f"  round {round_number + 1} ({order[0]} first): bare receive+delete "
                      f"{b:,.0f} /s, consumer {c:,.0f} /s, ratio {c / b:.2f}")
            changelog = database_counts(url, settings.state_schema)[3]
        finally:
            engine.dispose()
    print(f"  checked after every consumer run: {events:,} legacy rows, {events:,} inbox "
          f"entries (applied), queue empty; change-log rows of the last run: {changelog:,} "
          "(sync back's writes, tagged with their origin)")
    print_table("events/s from SQS (moto) into PostgreSQL, consumer vs bare receive+delete of "
                "the same messages (median of rounds)", [
                    Figure("Consumer.poll_once -> legacy rows", median(consumed), median(bare),
                           "events/s", None, TARGET_RATIO),
                ])
    if not args.no_breakdown:
        print_breakdown(clock, events * args.rounds, sum(events / c for c in consumed))


def print_breakdown(clock: Clock, events: int, total: float) -> None:
    """Per event, where the consumer's wall time went, over all its runs."""
    sqs_seconds = sum(s for name, s in clock.seconds.items() if name.startswith("sqs "))
    apply_seconds = clock.seconds["Applier.apply"]
    statement_seconds = clock.seconds["db statements"]
    rows = [(f"{name} ({clock.calls[name] / events * 10:.2f} calls per 10 events)", s)
            for name, s in sorted(clock.seconds.items()) if name.startswith("sqs ")]
    rows += [
        ("Applier.apply, one transaction per event", apply_seconds),
        (f"  of which in cursor.execute ({clock.calls['db statements'] / events:.1f} "
         "statements per event)", statement_seconds),
        ("  of which the rest (SQLAlchemy, pool ping, BEGIN/COMMIT)",
         apply_seconds - statement_seconds),
        ("parsing, mapping, loop (the rest)", total - sqs_seconds - apply_seconds),
    ]
    print("\nconsumer, per event (all consumer runs; wall time, microseconds)")
    width = max(len(name) for name, _ in rows)
    for name, seconds in rows:
        print(f"  {name.ljust(width)}  {seconds / events * 1e6:8,.0f} us  "
              f"{seconds / total:6.1%}")
    print(f"  {'total'.ljust(width)}  {total / events * 1e6:8,.0f} us")


if __name__ == "__main__":
    main()

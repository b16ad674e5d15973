"""Sync back throughput: events/s applied from an SQS queue (moto) into PostgreSQL by the real
consumer, ``Consumer.poll_once()`` driven until every event was applied, divided by a bare
receive-and-delete loop on the same queue (``receive_message`` of 10, ``WaitTimeSeconds=0``,
then ``delete_message_batch``): the ceiling the queue itself sets.

Both sides take the very same ready-made EventBridge-envelope bodies (OrderPlaced upserts of
distinct order ids) off the queue, put there with ``send_message_batch``; before each side the
legacy table, the inbox, the synced rows and the change log are emptied. moto's server runs in
its own process on a free 127.0.0.1 port. moto's ReceiveMessage costs grow with the number of
messages on the queue (it recomputes the queue's attributes, a scan of every message, for each
message it returns), so by default the events go through in slices of ``--depth`` messages, each
slice filled outside the timing once the previous one is drained; ``--depth 0`` fills the queue
with all of them at once. Target: the consumer reaches at least 0.7 of the bare loop's rate.
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

from cdc.core import database
from cdc.core.dialects import POSTGRESQL
from cdc.core.limits import SQS_RECEIVE_MAX
from cdc.core.settings import Settings
from cdc.core.state import state_tables
from sync_back.consumer import Consumer
from sync_back.mapping import load_mappings

TARGET_RATIO = 0.7
DEFAULT_DEPTH = 10
SIDE_TIMEOUT = 60.0  # seconds; either side draining N events slower than this is a failure

# The legacy table and mapping of tests/integration/test_sync_back.py (newer_wins upserts).
ORDERS_TABLE = "public.orders"
ORDERS_DDL = (
    "CREATE TABLE public.orders (id int PRIMARY KEY, total numeric(10,2) NOT NULL, "
    "customer text, updated_at timestamptz NOT NULL, note text)"
)
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
        detail = {
            "id": str(uuid.uuid4()),
            "order": {
                "id": order_id,
                "total": f"{order_id % 1000}.{order_id % 100:02d}",
                "customer": {"name": f"customer {order_id}"},
                "updated_at": f"2026-11-28T{order_id % 24:02d}:00:00Z",
                "note": "bench",
            },
        }
        out.append(
            json.dumps(
                {
                    "version": "0",
                    "id": str(uuid.uuid4()),
                    "detail-type": "OrderPlaced",
                    "source": "shop.orders",
                    "account": "123456789012",
                    "time": "2026-11-28T12:00:00Z",
                    "region": "us-east-1",
                    "resources": [],
                    "detail": detail,
                }
            )
        )
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
            conn.execute(
                f"TRUNCATE {ORDERS_TABLE}, {schema}.inbox, {schema}.synced_rows, "
                f"{schema}.changelog RESTART IDENTITY"
            )
        for table in (
            ORDERS_TABLE,
            f"{schema}.inbox",
            f"{schema}.synced_rows",
            f"{schema}.changelog",
        ):
            conn.execute(f"VACUUM ANALYZE {table}")


def database_counts(url: URL, schema: str) -> tuple[int, int, int, int]:
    """Legacy rows, inbox entries, inbox entries applied, change-log rows."""
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(
            f"SELECT (SELECT count(*) FROM {ORDERS_TABLE}), (SELECT count(*) FROM {schema}.inbox),"
            f" (SELECT count(*) FROM {schema}.inbox WHERE outcome = 'applied'),"
            f" (SELECT count(*) FROM {schema}.changelog)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def fill_queue(sqs: Any, queue: str, messages: list[str]) -> None:
    for start in range(0, len(messages), 10):
        reply = sqs.send_message_batch(
            QueueUrl=queue,
            Entries=[
                {"Id": str(i), "MessageBody": body}
                for i, body in enumerate(messages[start : start + 10])
            ],
        )
        if reply.get("Failed"):
            raise SystemExit(f"moto refused messages: {reply['Failed'][:3]}")


def queue_depth(sqs: Any, queue: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


# -- the breakdown -------------------------------------------------------------------------


@dataclass
class Clock:
    """Seconds and calls per part of a side's work, summed over its runs."""

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


class TimedSqs:
    """A boto3 client with each call's duration noted under ``sqs <operation>``."""

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


class ConsumerSide:
    """The real consumer, built as ``sync_back.cli`` builds it, driven by ``poll_once()``."""

    def __init__(self, settings: Settings, engine: Engine, queue: str, clock: Clock) -> None:
        sqs: Any = boto3.client("sqs")  # as sync_back.cli builds it
        sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])  # warm, untimed
        # Reflects the legacy table (check_columns), so the pool holds a connection already.
        self.consumer = Consumer(
            settings,
            engine,
            state_tables(POSTGRESQL, settings.state_schema),
            load_mappings(settings.sync_back, settings.default_schema),
            TimedSqs(sqs, clock),
        )
        applier = self.consumer.applier
        # The consumer applies a received batch with apply_many (apply is its one-event form).
        applier.apply_many = clock.wrap(  # type: ignore[method-assign]
            "Applier.apply_many", applier.apply_many
        )

    def drain(self, events: int, deadline: float) -> None:
        """Poll until ``events`` more events were applied."""
        stats = self.consumer.stats
        target = stats.applied + events
        while stats.applied < target and stats.received <= target:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"the consumer applied {stats.applied} of {target} events "
                    f"in {SIDE_TIMEOUT:.0f} s ({stats})"
                )
            self.consumer.poll_once()

    def check(self, events: int) -> None:
        stats = self.consumer.stats
        if stats.applied != events or stats.received != events:
            raise SystemExit(f"the consumer applied {stats.applied} of {events} events ({stats})")


class BareSide:
    """receive_message (10, no wait) then delete_message_batch, nothing else."""

    def __init__(self, queue: str, clock: Clock) -> None:
        sqs = boto3.client("sqs")
        sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])  # warm, untimed
        self.sqs: Any = TimedSqs(sqs, clock)
        self.queue = queue
        self.received = 0

    def drain(self, events: int, deadline: float) -> None:
        target = self.received + events
        while self.received < target:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"the bare loop received {self.received} of {target} "
                    f"messages in {SIDE_TIMEOUT:.0f} s"
                )
            messages = self.sqs.receive_message(
                QueueUrl=self.queue, MaxNumberOfMessages=SQS_RECEIVE_MAX, WaitTimeSeconds=0
            ).get("Messages", [])
            if messages:
                self.sqs.delete_message_batch(
                    QueueUrl=self.queue,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(messages)
                    ],
                )
                self.received += len(messages)

    def check(self, events: int) -> None:
        if self.received != events:
            raise SystemExit(f"the bare loop received {self.received} of {events} messages")


@dataclass
class Run:
    settings: Settings
    engine: Engine
    url: URL
    queue: str
    sqs: Any
    messages: list[str]
    depth: int
    changelog: int = 0  # change-log rows after the last consumer side

    def side(self, which: str, clock: Clock) -> float:
        """Seconds the side took to take every message off the queue (fills not counted)."""
        events = len(self.messages)
        schema = self.settings.state_schema
        reset_database(self.url, schema)
        if queue_depth(self.sqs, self.queue):
            raise SystemExit("the queue is not empty before a run")
        side: ConsumerSide | BareSide
        if which == "consumer":
            side = ConsumerSide(self.settings, self.engine, self.queue, clock)
        else:
            side = BareSide(self.queue, clock)
        deadline = time.monotonic() + SIDE_TIMEOUT
        seconds = 0.0
        with statement_clock(self.engine, clock):
            for start in range(0, events, self.depth):
                chunk = self.messages[start : start + self.depth]
                fill_queue(self.sqs, self.queue, chunk)  # untimed
                started = time.perf_counter()
                side.drain(len(chunk), deadline)
                seconds += time.perf_counter() - started
        clock.seconds["total"] += seconds
        side.check(events)
        if which == "consumer":
            legacy, inbox, applied, self.changelog = database_counts(self.url, schema)
            if (legacy, inbox, applied) != (events, events, events):
                raise SystemExit(
                    f"after the consumer: {legacy} legacy rows, {inbox} inbox "
                    f"entries ({applied} applied), expected {events}"
                )
        depth = queue_depth(self.sqs, self.queue)
        if depth:
            raise SystemExit(f"{depth} messages left on the queue after the {which} side")
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events", type=int, default=2_000, help="events (SQS messages) per run (default 2000)"
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=DEFAULT_DEPTH,
        help="messages put on the queue at a time: the events go through in "
        "slices of this many, each filled (untimed) once the previous one "
        f"is drained; 0 fills all of them at once (default {DEFAULT_DEPTH}; "
        "moto's receive costs grow with the queue's depth)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="bare/consumer pairs, in alternating order; medians are reported (default 2)",
    )
    args = parser.parse_args()
    if args.events < 1 or args.rounds < 1 or args.depth < 0:
        parser.error("--events and --rounds must be positive, --depth 0 or more")
    events = args.events
    depth = args.depth if args.depth > 0 else events

    bare: list[float] = []
    consumed: list[float] = []
    clocks = {"consumer": Clock(), "bare": Clock()}
    with (
        moto_server() as endpoint,
        scratch_database() as url,
        tempfile.TemporaryDirectory() as scratch,
    ):
        sqs = boto3.client("sqs")
        queue = sqs.create_queue(QueueName=f"cdc-bench-sync-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        config = Path(scratch) / "cdc.toml"
        config.write_text(MAPPING)
        settings = capture_settings(
            url,
            tables=ORDERS_TABLE,
            config=str(config),
            sync_queue_url=queue,
            sync_wait_seconds="0",
        )
        engine = prepare_orders(settings)
        try:
            run = Run(settings, engine, url, queue, sqs, bodies(events), depth)
            print(
                f"sync back throughput: {events:,} OrderPlaced events per run, at most "
                f"{depth:,} on the queue at a time, from moto's SQS at {endpoint} into "
                f"{ORDERS_TABLE} (capture triggers on), {args.rounds} round(s)"
            )
            for round_number in range(args.rounds):
                order = ["consumer", "bare"] if round_number % 2 else ["bare", "consumer"]
                seconds = {which: run.side(which, clocks[which]) for which in order}
                b, c = events / seconds["bare"], events / seconds["consumer"]
                bare.append(b)
                consumed.append(c)
                print(
                    f"  round {round_number + 1} ({order[0]} first): bare receive+delete "
                    f"{b:,.0f} /s, consumer {c:,.0f} /s, ratio {c / b:.2f}"
                )
            changelog = run.changelog
        finally:
            engine.dispose()
    print(
        f"  after every consumer run: {events:,} legacy rows and {events:,} inbox entries "
        f"(applied), queue empty; {changelog:,} change-log rows (sync back's writes, tagged "
        "with their origin)"
    )
    print_table(
        "events/s from SQS (moto) into PostgreSQL, consumer vs bare receive+delete of "
        "the same messages (median of rounds)",
        [
            Figure(
                "Consumer.poll_once -> legacy rows",
                median(consumed),
                median(bare),
                "events/s",
                None,
                TARGET_RATIO,
            ),
        ],
    )
    print_breakdown(clocks, events * args.rounds)


def print_breakdown(clocks: dict[str, Clock], events: int) -> None:
    """Per event, where each side's timed wall time went, over all its runs."""
    consumer, bare = clocks["consumer"], clocks["bare"]

    def sqs_seconds(clock: Clock) -> float:
        return sum(s for name, s in clock.seconds.items() if name.startswith("sqs "))

    apply_seconds = consumer.seconds["Applier.apply_many"]
    statements = consumer.seconds["db statements"]
    rows: list[tuple[str, float | None, float | None]] = []
    for name in ("sqs receive_message", "sqs delete_message_batch"):
        label = (
            f"{name} ({consumer.calls[name] / events * 10:.1f} / "
            f"{bare.calls[name] / events * 10:.1f} calls per 10 events)"
        )
        rows.append((label, consumer.seconds[name], bare.seconds[name]))
    rows += [
        ("Applier.apply_many (one transaction per received batch)", apply_seconds, None),
        (
            f"  in cursor.execute ({consumer.calls['db statements'] / events * 10:.1f} calls "
            "per 10 events)",
            statements,
            None,
        ),
        (
            "  outside it (SQLAlchemy, COMMIT, a pre-ping after a pause)",
            apply_seconds - statements,
            None,
        ),
        (
            "the rest (parsing, mapping, loop)",
            consumer.seconds["total"] - sqs_seconds(consumer) - apply_seconds,
            bare.seconds["total"] - sqs_seconds(bare),
        ),
        ("total", consumer.seconds["total"], bare.seconds["total"]),
    ]
    width = max(len(name) for name, _, _ in rows)
    print("\nper event, microseconds of wall time (all runs; share of the side's total)")
    print(f"  {''.ljust(width)}  {'consumer':>16}  {'bare':>16}")

    def cell(seconds: float | None, total: float) -> str:
        if seconds is None:
            return ""
        return f"{seconds / events * 1e6:7,.0f} ({seconds / total:4.0%})"

    for name, c, b in rows:
        print(
            f"  {name.ljust(width)}  {cell(c, consumer.seconds['total']):>16}  "
            f"{cell(b, bare.seconds['total']):>16}"
        )


if __name__ == "__main__":
    main()

"""Sync back under faults: SQS throttling, failed batch entries, reset connections and slow
replies (the fault-injecting proxy in front of moto's SQS), legacy database connections
terminated in the middle of a batch's transaction, and the consumer process killed with
SIGKILL and started again. Afterwards every event was applied, and none twice: an audit
trigger on the legacy table records each write, and each order has exactly one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from cdc.core import database
from cdc.core.dialects import POSTGRESQL
from cdc.core.settings import Settings
from cdc.core.state import state_tables
from sync_back.consumer import Consumer
from sync_back.mapping import load_mappings
from tests.faults.proxy import FaultPlan, FaultProxy
from tests.integration.helpers import prepared, raw_engine, settings_for
from tests.integration.test_sync_back import ORDERS, config, envelope, order_detail

pytestmark = pytest.mark.integration

# Every write to the legacy table, as the legacy database saw it: an event applied twice would
# leave two rows here (an upsert of a new order is an insert, then an update).
AUDIT = (
    "CREATE TABLE order_writes (order_id int NOT NULL, op text NOT NULL)",
    "CREATE FUNCTION audit_order() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "INSERT INTO order_writes VALUES (NEW.id, TG_OP); RETURN NEW; END $$",
    "CREATE TRIGGER audit AFTER INSERT OR UPDATE ON orders FOR EACH ROW "
    "EXECUTE FUNCTION audit_order()",
)
SQS_CALLS = frozenset(
    {
        "AmazonSQS.ReceiveMessage",
        "AmazonSQS.DeleteMessageBatch",
        "AmazonSQS.ChangeMessageVisibilityBatch",
    }
)


def send_orders(sqs: Any, queue: str, count: int) -> None:
    """Orders 1 to ``count``, one event each, as the new system's rule would deliver them."""
    bodies = [envelope(order_detail(n, f"{n}.00", 9)) for n in range(1, count + 1)]
    for start in range(0, count, 10):
        sqs.send_message_batch(
            QueueUrl=queue,
            Entries=[
                {"Id": str(i), "MessageBody": body}
                for i, body in enumerate(bodies[start : start + 10])
            ],
        )


def queue_is_empty(sqs: Any, queue: str) -> bool:
    """No message left, neither visible nor in flight: nothing can be delivered again."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return all(value == "0" for value in attributes.values())


def inbox_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM cdc.inbox")).scalar_one())


def wait_until_done(
    sqs: Any, queue: str, engine: Engine, count: int, timeout: float, alive: Any = lambda: True
) -> None:
    deadline = time.monotonic() + timeout
    while not (inbox_count(engine) >= count and queue_is_empty(sqs, queue)):
        assert alive(), "the consumer stopped"
        assert time.monotonic() < deadline, f"{inbox_count(engine)} of {count} events applied"
        time.sleep(0.2)


def assert_each_applied_once(engine: Engine, count: int) -> None:
    with engine.connect() as connection:
        writes = dict(
            connection.execute(
                text("SELECT order_id, count(*) FROM order_writes GROUP BY order_id")
            ).all()
        )
        rows = dict(connection.execute(text("SELECT id, total::text FROM orders")).all())
        outcomes = dict(
            connection.execute(
                text("SELECT outcome, count(*) FROM cdc.inbox GROUP BY outcome")
            ).all()
        )
        dead = connection.execute(text("SELECT count(*) FROM cdc.sync_dead_letters")).scalar_one()
    orders = set(range(1, count + 1))
    assert set(rows) == orders and all(rows[n] == f"{n}.00" for n in orders)  # nothing lost
    assert set(writes) == orders and set(writes.values()) == {1}, {
        n: c for n, c in writes.items() if c != 1
    }  # nothing applied twice
    assert outcomes == {"applied": count} and dead == 0


def prepared_with_audit(settings: Settings, url: URL) -> Engine:
    """The legacy table with its audit trigger; an engine for the test to look with, whose
    connections are not the service's (application_name "cdc")."""
    engine = prepared(settings, ORDERS)
    with engine.begin() as connection:
        for statement in AUDIT:
            connection.execute(text(statement))
    engine.dispose()
    return raw_engine(url)


def fresh_queue(sqs: Any, visibility: int) -> str:
    return str(
        sqs.create_queue(
            QueueName=f"sync-faults-{uuid.uuid4().hex[:8]}",
            Attributes={"VisibilityTimeout": str(visibility)},
        )["QueueUrl"]
    )


def consumer_settings(pg_url: URL, tmp_path: Path, queue: str) -> Settings:
    return settings_for(
        pg_url,
        "orders",
        config=config(tmp_path),
        sync_queue_url=queue,
        sync_wait_seconds="1",
        sync_visibility_timeout="5",
    )


def test_queue_faults_and_terminated_connections_apply_each_event_once(
    pg_url: URL, moto_endpoint: str, tmp_path: Path, fault_summary: list[str]
) -> None:
    started = time.monotonic()
    events = 400
    sqs = boto3.client("sqs")
    queue = fresh_queue(sqs, 5)
    settings = consumer_settings(pg_url, tmp_path, queue)
    engine = prepared_with_audit(settings, pg_url)
    send_orders(sqs, queue, events)
    plan = FaultPlan(
        SQS_CALLS, throttle=0.30, partial=0.10, reset=0.05, reset_after=0.05, slow=0.05, deck=20
    )
    stop = threading.Event()
    killer_rng = random.Random(7)
    terminated: list[int] = []
    admin = raw_engine(pg_url)

    def terminate_mid_transaction() -> None:
        # The consumers' connections (application_name "cdc") found inside a transaction are
        # terminated: the batch in hand rolls back, inbox claims included, and is retried.
        with admin.connect() as connection:
            while not stop.wait(killer_rng.uniform(0.2, 0.6)):
                for _ in range(200):  # look for a transaction in progress, for up to ~1 s
                    killed = connection.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND application_name = 'cdc' "
                            "AND xact_start IS NOT NULL AND pid <> pg_backend_pid()"
                        )
                    ).scalar_one()
                    connection.commit()
                    if killed or stop.wait(0.005):
                        break
                terminated.append(int(killed))

    with FaultProxy(moto_endpoint, plan, seed=20261128) as proxy:
        # Given: two consumers whose queue is behind the faulty proxy; botocore's own retries
        # are off, so every injected fault reaches the consumer's handling
        client_config = botocore.config.Config(retries={"total_max_attempts": 1}, read_timeout=10)
        consumers = [
            Consumer(
                settings,
                database.connect(settings),
                state_tables(POSTGRESQL),
                load_mappings(settings.sync_back, settings.default_schema),
                boto3.client("sqs", endpoint_url=proxy.url, config=client_config),
                stop,
            )
            for _ in range(2)
        ]
        threads = [threading.Thread(target=c.run, daemon=True) for c in consumers]
        threads.append(threading.Thread(target=terminate_mid_transaction, daemon=True))
        # When: they apply the events while connections are terminated mid-transaction
        for thread in threads:
            thread.start()
        try:
            wait_until_done(
                sqs, queue, engine, events, 60, alive=lambda: all(t.is_alive() for t in threads)
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            admin.dispose()

    # Then: every event was applied exactly once
    assert_each_applied_once(engine, events)
    assert sum(terminated) > 0 and sum(c.stats.db_retries for c in consumers) > 0
    assert all(
        proxy.counts[kind] > 0 for kind in ("throttle", "partial", "reset", "reset_after", "slow")
    ), proxy.summary()
    retries: dict[str, int] = {}
    for consumer in consumers:
        for code, count in consumer.stats.queue_retries_by_code.items():
            retries[code] = retries.get(code, 0) + count
    assert retries.get("RequestThrottled", 0) > 0 and retries.get("InternalError", 0) > 0
    duplicates = sum(c.stats.duplicates for c in consumers)
    fault_summary.append(
        f"sync back, SQS faults and terminated connections: {proxy.summary()} (SQS); "
        f"consumer retries by code {dict(sorted(retries.items()))}; connections terminated "
        f"mid-transaction={sum(terminated)} db retries="
        f"{sum(c.stats.db_retries for c in consumers)}; events={events} applied once, "
        f"lost=0, redelivered and skipped as duplicates={duplicates} "
        f"in {time.monotonic() - started:.1f}s"
    )


def test_a_consumer_killed_mid_batch_applies_each_event_once(
    pg_url: URL, moto_endpoint: str, tmp_path: Path, fault_summary: list[str]
) -> None:
    started = time.monotonic()
    events, kills_wanted = 300, 6
    sqs = boto3.client("sqs")
    queue = fresh_queue(sqs, 5)
    settings = consumer_settings(pg_url, tmp_path, queue)
    engine = prepared_with_audit(settings, pg_url)
    send_orders(sqs, queue, events)
    # Slow deletes (held by the proxy, dropped if the consumer died meanwhile) widen the
    # moment between a batch's commit and its deletion, where a kill leaves applied messages
    # to come back.
    plan = FaultPlan(
        frozenset({"AmazonSQS.DeleteMessageBatch"}), slow=0.5, slow_seconds=(0.1, 0.25), deck=10
    )
    rng = random.Random(20261128)
    kills = 0
    logs: list[Path] = []

    with FaultProxy(moto_endpoint, plan, seed=1) as proxy:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
        env.update(
            {
                "CDC_DATABASE_URL": settings.url.render_as_string(hide_password=False),
                "CDC_TABLES": "orders",
                "CDC_CONFIG": config(tmp_path),
                "CDC_SYNC_QUEUE_URL": queue,
                "CDC_SYNC_WAIT_SECONDS": "1",
                "CDC_SYNC_VISIBILITY_TIMEOUT": "5",
                "CDC_LOG_LEVEL": "INFO",
                "CDC_LOG_FORMAT": "json",
                "AWS_ENDPOINT_URL": proxy.url,
            }
        )

        def start() -> subprocess.Popen[bytes]:
            logs.append(tmp_path / f"consumer-{len(logs)}.log")
            with logs[-1].open("wb") as log:
                return subprocess.Popen(
                    [sys.executable, "-m", "sync_back.cli", "run"], env=env, stderr=log
                )

        def applied_since(count: int) -> None:
            # Kill once the new process is applying, so that the kill lands mid-stream
            deadline = time.monotonic() + 10
            while inbox_count(engine) <= count and time.monotonic() < deadline:
                time.sleep(0.02)

        # When: the consumer is killed with SIGKILL while it applies, and started again each
        # time: every other kill at a random moment, the others while a batch is committed and
        # its deletion held on its way to the queue
        consumer = start()
        try:
            while kills < kills_wanted and inbox_count(engine) < events:
                applied_since(inbox_count(engine))
                if kills % 2:
                    time.sleep(rng.uniform(0.0, 0.4))
                else:
                    proxy.holding.clear()
                    proxy.holding.wait(10)
                consumer.send_signal(signal.SIGKILL)
                consumer.wait(10)
                kills += 1
                consumer = start()
            wait_until_done(sqs, queue, engine, events, 60, alive=lambda: consumer.poll() is None)
        finally:
            consumer.send_signal(signal.SIGTERM)
            assert consumer.wait(30) == 0

    # Then: every event was applied exactly once, though some were delivered again
    assert_each_applied_once(engine, events)
    duplicates = 0
    for path in logs:
        for line in path.read_text().splitlines():
            if line.startswith("{") and json.loads(line)["message"].endswith(": duplicate"):
                duplicates += 1
    assert kills == kills_wanted
    assert proxy.counts["abandoned"] >= kills // 2 and duplicates >= 10, (
        duplicates,
        proxy.summary(),
    )
    fault_summary.append(
        f"sync back, consumer SIGKILLed mid-batch: kills={kills} ({proxy.summary()} on "
        f"DeleteMessageBatch; abandoned: held while the consumer was killed); "
        f"events={events} applied once, lost=0, redelivered and skipped "
        f"as duplicates={duplicates} in {time.monotonic() - started:.1f}s"
    )

"""A running sync-back consumer's /healthz, /readyz and /metrics: the applied, duplicate,
conflict and dead-letter counters move as events are applied."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from tests.conftest import free_port
from tests.integration.helpers import prepared, settings_for
from tests.integration.test_health import get, metric
from tests.integration.test_sync_back import ORDERS, config, envelope, order_detail

pytestmark = pytest.mark.integration


def test_metrics_and_readiness_of_a_running_consumer(
    pg_url: URL, moto_endpoint: str, tmp_path: Path
) -> None:
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName=f"sync-health-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    settings = settings_for(pg_url, "orders")
    engine = prepared(settings, ORDERS)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(
        {
            "CDC_DATABASE_URL": settings.url.render_as_string(hide_password=False),
            "CDC_TABLES": "orders",
            "CDC_CONFIG": config(tmp_path, "legacy_wins"),
            "CDC_SYNC_QUEUE_URL": queue,
            "CDC_SYNC_WAIT_SECONDS": "1",
            "CDC_HEALTH_PORT": str(port),
            "CDC_LOG_LEVEL": "WARNING",
        }
    )
    consumer = subprocess.Popen([sys.executable, "-m", "sync_back.cli", "run"], env=env)
    base = f"http://127.0.0.1:{port}"

    def scrape() -> str:
        status, body = get(f"{base}/metrics")
        assert status == 200
        return body

    def wait_for(name: str, value: float) -> str:
        deadline = time.monotonic() + 20
        while metric(body := scrape(), name) < value:
            assert time.monotonic() < deadline, f"{name} stayed below {value}"
            time.sleep(0.1)
        return body

    try:
        # Given: a consumer that answers and has reached its queue
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = get(f"{base}/healthz")
                break
            except OSError:
                assert consumer.poll() is None, "the consumer exited"
                assert time.monotonic() < deadline, "the health endpoint never answered"
                time.sleep(0.1)
        assert status == 200
        deadline = time.monotonic() + 10
        while get(f"{base}/readyz")[0] != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        assert metric(scrape(), "sync_back_applied_total") == 0

        # When: the new system sends 20 orders, scraped while they are applied
        first = order_detail(1, "1.00", 9)
        bodies = [envelope(first)] + [envelope(order_detail(n, f"{n}.00", 9)) for n in range(2, 21)]
        for n in range(0, len(bodies), 10):
            sqs.send_message_batch(
                QueueUrl=queue,
                Entries=[
                    {"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies[n : n + 10])
                ],
            )
        applied: list[float] = []
        deadline = time.monotonic() + 20
        while not applied or applied[-1] < 20:
            assert time.monotonic() < deadline, f"applied: {applied[-5:]}"
            applied.append(metric(scrape(), "sync_back_applied_total"))
            time.sleep(0.05)
        # Then: the applied counter only went up, to 20
        assert applied == sorted(applied) and applied[-1] == 20

        # When: one of them comes again, a body that is not JSON arrives, and the legacy
        # application edits order 2 before the new system sends a newer version of it
        sqs.send_message(QueueUrl=queue, MessageBody=envelope(first))
        sqs.send_message(QueueUrl=queue, MessageBody="{not json")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE orders SET total = 5, updated_at = '2026-11-28T10:00:00Z' WHERE id = 2"
                )
            )
        sqs.send_message(QueueUrl=queue, MessageBody=envelope(order_detail(2, "9.00", 11)))

        # Then: a duplicate, a dead letter and a conflict (legacy_wins skips it) are counted
        wait_for("sync_back_duplicates_total", 1)
        wait_for("sync_back_dead_letters_total", 1)
        body = wait_for("sync_back_conflicts_total", 1)
        assert metric(body, "sync_back_applied_total") == 20
        assert metric(body, "sync_back_messages_received_total") == 23
        assert metric(body, "sync_back_parked_total") == 0
        assert 0 < time.time() - metric(body, "sync_back_last_poll_timestamp_seconds") < 30
        assert get(f"{base}/readyz")[0] == 200
        assert get(f"{base}/nothing")[0] == 404
        with engine.connect() as connection:
            assert (
                connection.execute(text("SELECT total::text FROM orders WHERE id = 2")).scalar()
                == "5.00"
            )
    finally:
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(30) == 0

"""The bus failing under a stream of changes: a fault-injecting HTTP proxy between the worker
and moto's EventBridge throttles 30% of PutEvents calls, fails some entries of 10%, resets
connections (before and after the call took effect) and holds calls back. Afterwards every change
was delivered at least once, duplicates carry the same id, and per key the positions order
the changes as they were committed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from typing import Any

import boto3
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from tests.conftest import free_port
from tests.faults.proxy import FaultPlan, FaultProxy
from tests.integration.helpers import Wiring, prepared, raw_engine, settings_for_mode

pytestmark = pytest.mark.integration

KEYS = 50
CHANGES = 2_000
PLAN = FaultPlan(
    frozenset({"AWSEvents.PutEvents"}),
    throttle=0.30,
    partial=0.10,
    reset=0.02,
    reset_after=0.03,
    slow=0.05,
)


def wire_queues(source: str, parts: str = "0123456789abcdef") -> list[Wiring]:
    """A bus whose rules spread the events over one SQS queue per first hex digit of the event
    id: moto's SQS costs time in proportion to a queue's length on every send and receive, so
    a stream kept in many short queues stays fast to drain (one queue falls behind for good)."""
    suffix = uuid.uuid4().hex[:8]
    events, sqs = boto3.client("events"), boto3.client("sqs")
    bus = f"legacy-{suffix}"
    events.create_event_bus(Name=bus)
    wirings = []
    for part in parts:
        queue_url = sqs.create_queue(QueueName=f"capture-{suffix}-{part}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        events.put_rule(
            Name=f"to-queue-{suffix}-{part}",
            EventBusName=bus,
            EventPattern=json.dumps({"source": [source], "detail": {"id": [{"prefix": part}]}}),
        )
        events.put_targets(
            Rule=f"to-queue-{suffix}-{part}",
            EventBusName=bus,
            Targets=[{"Id": "queue", "Arn": arn}],
        )
        wirings.append(Wiring(bus, queue_url, sqs))
    return wirings


def publish_retries(port: int) -> dict[str, int]:
    """The worker's own count of entries sent again, by error code, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        body = reply.read().decode()
    return {
        code: int(float(value))
        for code, value in re.findall(
            r'^cdc_publish_retries_total\{code="([^"]+)"\} (\S+)$', body, re.MULTILINE
        )
    }


@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_a_failing_bus_loses_nothing(
    pg_url: URL, moto_endpoint: str, capture: str, fault_summary: list[str]
) -> None:
    started = time.monotonic()
    settings = settings_for_mode(pg_url, capture, "accounts")
    prepared(settings, "CREATE TABLE accounts (id int PRIMARY KEY, version int NOT NULL)")
    queues = wire_queues(settings.event_source)  # rules -> SQS queues, drained below
    legacy = raw_engine(pg_url)
    written = threading.Event()

    def write() -> None:
        with legacy.connect() as connection:
            for n in range(CHANGES):
                if n < KEYS:
                    connection.execute(text("INSERT INTO accounts VALUES (:k, 1)"), {"k": n})
                else:
                    connection.execute(
                        text("UPDATE accounts SET version = version + 1 WHERE id = :k"),
                        {"k": n % KEYS},
                    )
                connection.commit()
        written.set()

    expected = {(key, version) for key in range(KEYS) for version in range(1, CHANGES // KEYS + 1)}

    def received() -> list[dict[str, Any]]:
        return [message for wiring in queues for message in wiring.received]

    def delivered() -> set[tuple[int, int]]:
        return {(m["detail"]["key"]["id"], m["detail"]["after"]["version"]) for m in received()}

    def drain() -> int:
        return sum(wiring.drain_once() for wiring in queues)

    # Given: a worker whose only way to EventBridge is the faulty proxy (AWS_ENDPOINT_URL)
    with FaultProxy(moto_endpoint, PLAN, seed=20261128) as proxy:
        health = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
        env.update(
            {
                "CDC_DATABASE_URL": settings.url.render_as_string(hide_password=False),
                "CDC_TABLES": "accounts",
                "CDC_CAPTURE": capture,
                "CDC_SLOT_NAME": settings.slot_name,
                "CDC_BUS": "eventbridge",
                "CDC_EVENT_BUS_NAME": queues[0].bus_name,
                "CDC_BATCH_SIZE": "100",
                "CDC_POLL_INTERVAL": "0.05",
                "CDC_HEALTH_PORT": str(health),
                "CDC_LOG_LEVEL": "ERROR",
                "AWS_ENDPOINT_URL": proxy.url,
            }
        )
        worker = subprocess.Popen([sys.executable, "-m", "cdc", "run"], env=env)
        writer = threading.Thread(target=write)
        try:
            # When: CHANGES single-row changes are committed while the bus misbehaves
            writer.start()
            deadline = time.monotonic() + 150
            while not (written.is_set() and delivered() >= expected):
                assert worker.poll() is None, "the worker stopped"
                assert time.monotonic() < deadline, (
                    f"{len(expected - delivered())} changes never arrived; {proxy.summary()}"
                )
                if not drain():
                    time.sleep(0.02)
            retries = publish_retries(health)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
            writer.join(30)
            legacy.dispose()
        time.sleep(0.3)  # a reply the proxy dropped may still be on its way to the queue
        while drain():
            pass

    # Then: every change was delivered at least once ...
    details: list[dict[str, Any]] = [m["detail"] for m in received()]
    assert delivered() == expected
    # ... an event delivered twice carries the same id and the same content ...
    by_id: dict[str, str] = {}
    for detail in details:
        rendered = json.dumps(detail, sort_keys=True)
        assert by_id.setdefault(detail["id"], rendered) == rendered
    ids: dict[tuple[int, int], set[str]] = {}
    for detail in details:
        ids.setdefault((detail["key"]["id"], detail["after"]["version"]), set()).add(detail["id"])
    assert all(len(one) == 1 for one in ids.values())
    # ... and per key, position order is commit order
    for key in range(KEYS):
        ordered = sorted(
            {(d["position"], d["after"]["version"]) for d in details if d["key"]["id"] == key}
        )
        assert [version for _, version in ordered] == list(range(1, CHANGES // KEYS + 1)), key
    # ... although every kind of fault was injected, and the worker saw them
    assert all(
        proxy.counts[kind] > 0 for kind in ("throttle", "partial", "reset", "reset_after", "slow")
    ), proxy.summary()
    assert retries.get("ThrottlingException", 0) > 0 and retries.get("InternalFailure", 0) > 0
    duplicates = len(details) - len(expected)
    fault_summary.append(
        f"bus faults, {capture} mode: {proxy.summary()} (PutEvents); worker retries by code "
        f"{dict(sorted(retries.items()))}; changes={CHANGES} delivered={len(details)} lost=0 "
        f"duplicates={duplicates} in {time.monotonic() - started:.1f}s"
    )

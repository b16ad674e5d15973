"""Helpers of the integration tests: settings for a test database, a legacy table, the
EventBridge -> rule -> SQS wiring on moto's server, and a drain of that queue."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL

from cdc.app import open_source
from cdc.capture import slots, triggers
from cdc.capture.catalog import read_table
from cdc.capture.sources import Source
from cdc.capture.sources.changelog import ChangeLogSource
from cdc.core import database
from cdc.core.dialects import dialect_of
from cdc.core.limits import SQS_RECEIVE_MAX
from cdc.core.settings import Settings, load_settings
from cdc.core.state import state_tables


def settings_for(url: URL, tables: str, **extra: str) -> Settings:
    env = {
        "CDC_DATABASE_URL": url.render_as_string(hide_password=False),
        "CDC_TABLES": tables,
        "CDC_POLL_INTERVAL": "0.05",
    }
    env.update({f"CDC_{k.upper()}": v for k, v in extra.items()})
    return load_settings(env)


def prepared(settings: Settings, ddl: str) -> Engine:
    """Create the legacy table(s), migrate the state schema and set capture up (triggers, or
    publication and slot)."""
    engine = database.connect(settings)
    with engine.begin() as connection:
        for statement in ddl.split(";"):
            if statement.strip():
                connection.execute(text(statement))
    database.migrate(engine, settings)
    infos = [read_table(engine, t) for t in settings.table_refs]
    if settings.capture == "logical":
        slots.install(engine, infos, settings.slot_name, settings.publication_name)
    else:
        triggers.install(engine, infos, settings.state_schema)
    return engine


def source_for(settings: Settings, engine: Engine) -> Source:
    return open_source(settings, engine)


def changelog_source(settings: Settings, engine: Engine) -> ChangeLogSource:
    return ChangeLogSource(
        engine, state_tables(dialect_of(engine), settings.state_schema), settings.default_schema
    )


def settings_for_mode(url: URL, capture: str, tables: str, **extra: str) -> Settings:
    """Settings of one capture mode, with a slot name of their own per test database (the
    logical mode's slot; in changelog mode it only names the lease)."""
    extra.setdefault("slot_name", f"cdc_{url.database}"[:63])
    return settings_for(url, tables, capture=capture, **extra)


def drop_slot(engine: Engine, settings: Settings) -> None:
    """Slots outlive their database's connections and block DROP DATABASE: remove them."""
    if settings.capture == "logical":
        slots.drop(engine, settings.slot_name, settings.publication_name)


def raw_engine(url: URL) -> Engine:
    return create_engine(url, pool_size=10, max_overflow=10)


@dataclass
class Wiring:
    """A custom event bus with a rule that sends the capture's events to an SQS queue."""

    bus_name: str
    queue_url: str
    sqs: Any
    received: list[dict[str, Any]] = field(default_factory=list)

    def drain_once(self) -> int:
        reply = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=SQS_RECEIVE_MAX, WaitTimeSeconds=0
        )
        messages = reply.get("Messages", [])
        for message in messages:
            self.received.append(json.loads(message["Body"]))
        if messages:
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )
        return len(messages)

    def drain_until(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 60
    ) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.received):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out with {len(self.received)} events received")
            if not self.drain_once():
                time.sleep(0.05)


def wire_bus(source: str) -> Wiring:
    suffix = uuid.uuid4().hex[:8]
    events = boto3.client("events")
    sqs = boto3.client("sqs")
    bus = f"legacy-{suffix}"
    events.create_event_bus(Name=bus)
    queue_url = sqs.create_queue(QueueName=f"capture-{suffix}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(
        Name=f"to-queue-{suffix}", EventBusName=bus, EventPattern=json.dumps({"source": [source]})
    )
    events.put_targets(
        Rule=f"to-queue-{suffix}", EventBusName=bus, Targets=[{"Id": "queue", "Arn": arn}]
    )
    return Wiring(bus, queue_url, sqs)


@contextmanager
def running(target: Callable[[], None]) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    yield thread


def by_key(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Detail objects grouped by key, each group in position order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        groups.setdefault(json.dumps(event["key"], sort_keys=True), []).append(event)
    for group in groups.values():
        group.sort(key=lambda e: e["position"])
    return groups

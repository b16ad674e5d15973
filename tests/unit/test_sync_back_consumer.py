"""The consumer loop with a fake queue: deletion after handling, visibility extension, stop."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from cdc.bus import sqs as queue_module
from cdc.bus.sqs import DeleteEntry, VisibilityEntry
from cdc.core.dialects import SQLITE
from cdc.core.errors import Interrupted
from cdc.core.settings import load_settings
from cdc.core.state import state_tables
from sync_back.consumer import Consumer
from sync_back.mapping import Mappings


class FakeSqs:
    def __init__(self, count: int) -> None:
        self.messages = [
            {"MessageId": f"m{i}", "ReceiptHandle": f"r{i}", "Body": f"b{i}"} for i in range(count)
        ]
        self.deleted: list[str] = []
        self.extended: list[list[str]] = []

    def receive_message(self, **_: Any) -> dict[str, Any]:
        batch, self.messages = self.messages[:10], self.messages[10:]
        return {"Messages": batch}

    def delete_message_batch(
        self, *, QueueUrl: str, Entries: Sequence[DeleteEntry]
    ) -> dict[str, Any]:
        self.deleted.extend(e["ReceiptHandle"] for e in Entries)
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}

    def change_message_visibility_batch(
        self, *, QueueUrl: str, Entries: Sequence[VisibilityEntry]
    ) -> dict[str, Any]:
        self.extended.append([e["ReceiptHandle"] for e in Entries])
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}


def make(sqs: FakeSqs) -> Consumer:
    settings = load_settings(
        {
            "CDC_DATABASE_URL": "sqlite://",
            "CDC_TABLES": "t",
            "CDC_SYNC_QUEUE_URL": "q",
            "CDC_SYNC_VISIBILITY_TIMEOUT": "10",
        }
    )
    return Consumer(settings, create_engine("sqlite://"), state_tables(SQLITE), Mappings(), sqs)


def test_messages_are_deleted_after_they_were_handled() -> None:
    sqs = FakeSqs(3)
    consumer = make(sqs)
    handled: list[str] = []

    def handle_batch(items: list[tuple[str, str]], tick: Any = None) -> list[str]:
        handled.extend(message_id for _, message_id in items)
        return ["applied"] * len(items)

    consumer.handle_batch = handle_batch  # type: ignore[method-assign]
    assert consumer.poll_once() == 3
    assert handled == ["m0", "m1", "m2"] and sqs.deleted == ["r0", "r1", "r2"]


def test_a_slow_batch_extends_the_visibility_of_what_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sqs = FakeSqs(4)
    consumer = make(sqs)
    clock = iter(range(0, 1000, 3))  # each handled message takes 3 of the 10 seconds
    monkeypatch.setattr(queue_module.time, "monotonic", lambda: next(clock))
    consumer._prepare = lambda body, message_id: "own_event"  # type: ignore[method-assign]
    consumer.poll_once()
    assert sqs.extended and sqs.extended[0][-1] == "r3"
    assert sqs.deleted == ["r0", "r1", "r2", "r3"]


def test_a_stop_during_a_database_outage_deletes_nothing() -> None:
    sqs = FakeSqs(3)
    consumer = make(sqs)

    def handle_batch(items: list[tuple[str, str]], tick: Any = None) -> list[str]:
        raise Interrupted("stop requested while the legacy database was unavailable")

    consumer.handle_batch = handle_batch  # type: ignore[method-assign]
    assert consumer.poll_once() == 0
    assert sqs.deleted == []  # the batch's transaction never committed: all return to the queue


def test_lost_database_connections_are_retried() -> None:
    consumer = make(FakeSqs(0))
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError(
                "INSERT", {}, Exception("server closed the connection unexpectedly")
            )
        return "applied"

    consumer._retrying.wait = lambda state: 0.0  # type: ignore[method-assign,assignment]
    assert consumer._with_retry(flaky) == "applied"
    assert len(calls) == 3 and consumer.stats.db_retries == 2


def test_the_next_full_batch_is_received_while_one_is_applied() -> None:
    sqs = FakeSqs(25)
    consumer = make(sqs)
    calls: list[str] = []
    receive = sqs.receive_message

    def recorded_receive(**kwargs: Any) -> dict[str, Any]:
        reply = receive(**kwargs)
        calls.append(f"receive {len(reply['Messages'])}")
        return reply

    sqs.receive_message = recorded_receive  # type: ignore[method-assign]

    def handle_batch(items: list[tuple[str, str]], tick: Any = None) -> list[str]:
        applies = sum(c.startswith("apply") for c in calls)
        for _ in range(500):  # a full batch in hand: the next receive lands meanwhile
            if len(items) < 10 or sum(c.startswith("receive") for c in calls) >= applies + 2:
                break
            threading.Event().wait(0.01)
        calls.append(f"apply {len(items)}")
        if len(sqs.deleted) + len(items) == 25:
            consumer.stop.set()
        return ["applied"] * len(items)

    consumer.handle_batch = handle_batch  # type: ignore[method-assign]
    consumer.run()
    assert calls == ["receive 10", "receive 10", "apply 10", "receive 5", "apply 10", "apply 5"]
    assert sqs.deleted == [f"r{i}" for i in range(25)]


def test_a_batch_received_ahead_is_given_back_on_stop() -> None:
    sqs = FakeSqs(20)
    consumer = make(sqs)

    def handle_batch(items: list[tuple[str, str]], tick: Any = None) -> list[str]:
        consumer.stop.set()  # SIGTERM while the first batch is applied
        return ["applied"] * len(items)

    consumer.handle_batch = handle_batch  # type: ignore[method-assign]
    consumer.run()
    assert sqs.deleted == [f"r{i}" for i in range(10)]
    assert sqs.extended == [[f"r{i}" for i in range(10, 20)]]  # visible again at once


@pytest.mark.parametrize("prefix", ["", "valid.", "valid.valid."])
def test_our_own_captures_events_are_ignored_also_as_the_validator_republished_them(
    tmp_path: Path, prefix: str
) -> None:
    from tests.unit.test_sync_back_applier import CUSTOMERS, sqlite_consumer

    # Given: a mapping that names no source (every source's CustomerSet reaches it), and on
    # the queue our own capture's event, as the validator republishes it, beside another's
    legacy = sqlite_consumer(
        tmp_path / "legacy.db",
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)",
        CUSTOMERS,
    )
    own = prefix + legacy.settings.event_source
    sqs = FakeSqs(0)
    sqs.messages = [
        {"MessageId": "m0", "ReceiptHandle": "r0", "Body": customer_set(own, 1)},
        {"MessageId": "m1", "ReceiptHandle": "r1", "Body": customer_set("valid.shop", 2)},
        {"MessageId": "m2", "ReceiptHandle": "r2", "Body": customer_set(own + "x", 3)},
    ]
    settings = legacy.settings.model_copy(update={"sync_queue_url": "q"})
    consumer = Consumer(settings, legacy.engine, legacy.state, legacy.mappings, sqs)

    # When: the consumer polls
    assert consumer.poll_once() == 3

    # Then: our own event is counted as such, neither applied nor a dead letter; the others
    # are applied; all three leave the queue
    assert consumer.stats.own_events == 1 and consumer.stats.applied == 2
    assert consumer.dead_letters() == [] and consumer.stats.dead_letters == 0
    with legacy.engine.connect() as connection:
        ids = connection.execute(text("SELECT id FROM customers ORDER BY id")).scalars().all()
    assert ids == [2, 3]
    assert sqs.deleted == ["r0", "r1", "r2"]


def customer_set(source: str, customer_id: int) -> str:
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "detail-type": "CustomerSet",
            "source": source,
            "detail": {"id": str(uuid.uuid4()), "customer": {"id": customer_id, "name": "Ada"}},
        }
    )

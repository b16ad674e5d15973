"""Validation end to end on moto's server: capture -> producer bus -> forwarding rule -> central
bus -> validation queue -> validator -> valid.* on the central bus -> consumers, with the
topology created by ``cdc topology apply``'s code and the schemas by ``cdc schemas generate``."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import URL

from cdc.bus.publishers.eventbridge import EventBridgePublisher
from cdc.capture.worker import Worker
from cdc.commands.validation import cmd_schemas_generate
from cdc.core.dialects import POSTGRESQL
from cdc.core.limits import SQS_RECEIVE_MAX
from cdc.core.settings import Settings
from cdc.core.state import StateTables, state_tables
from cdc.topology.apply import Applied, apply
from cdc.topology.model import topology_from_settings
from cdc.validate import state as validation_state
from cdc.validate.registry import SchemaRegistry
from cdc.validate.validator import Validator, resend_in_doubt
from tests.integration.helpers import drop_slot, prepared, settings_for_mode, source_for

pytestmark = pytest.mark.integration

ORDERS = (
    "CREATE TABLE orders (id int PRIMARY KEY, total numeric(10,2) NOT NULL, "
    "status text NOT NULL, placed_at timestamptz NOT NULL, photo bytea, ref uuid, "
    "meta jsonb, tags text[], weight double precision)"
)
SOURCE = "legacy.shop"


class Crash(BaseException):
    """The validator process dying at a step (BaseException: nothing may catch it)."""


def crash_at(step: str, occurrence: int = 1) -> Any:
    seen = Counter[str]()

    def hook(reached: str) -> None:
        seen[reached] += 1
        if reached == step and seen[reached] == occurrence:
            raise Crash(step)

    return hook


def setup(
    url: URL, tmp_path: Path, capture: str = "changelog"
) -> tuple[Settings, Engine, Applied, Any]:
    """A producer bus, a central bus, consumers (a queue; a bus with a queue behind it to
    watch it), the capture's table and the schemas of its events."""
    suffix = uuid.uuid4().hex[:8]
    config = tmp_path / "cdc.toml"
    config.write_text(f"""
[topology]
validation_queue = "validation-{suffix}"
[[topology.producers]]
name = "shop-{suffix}"
source = "{SOURCE}"
bus = "shop-{suffix}"
[[topology.consumers]]
name = "view-{suffix}"
detail_types = ["public.orders.insert", "public.orders.update"]
[[topology.consumers]]
name = "archive-{suffix}"
kind = "bus"
sources = ["{SOURCE}"]
""")
    settings = settings_for_mode(
        url,
        capture,
        "orders",
        config=str(config),
        bus="eventbridge",
        event_bus_name=f"shop-{suffix}",
        source=SOURCE,
        central_bus_name=f"central-{suffix}",
        schemas_dir=str(tmp_path / "schemas"),
        validate_wait_seconds="0",
        validate_visibility_timeout="1",
    )
    engine = prepared(settings, ORDERS)
    applied = apply(topology_from_settings(settings))
    settings = settings.model_copy(update={"validate_queue_url": applied.validation_queue_url})
    # The archive consumer's bus: a rule to a queue lets the test see what reached it
    events, sqs = boto3.client("events"), boto3.client("sqs")
    archive_url = sqs.create_queue(QueueName=f"archive-watch-{suffix}")["QueueUrl"]
    archive_arn = sqs.get_queue_attributes(QueueUrl=archive_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    events.put_rule(
        Name="watch",
        EventBusName=f"archive-{suffix}",
        EventPattern=json.dumps({"source": [{"prefix": ""}]}),
    )
    events.put_targets(
        Rule="watch", EventBusName=f"archive-{suffix}", Targets=[{"Id": "q", "Arn": archive_arn}]
    )
    return settings, engine, applied, archive_url


def validator(settings: Settings, engine: Engine, failpoint: Any = None) -> Validator:
    return Validator(
        settings,
        engine,
        state_tables(POSTGRESQL, settings.state_schema),
        SchemaRegistry.load(settings.schemas_dir),
        EventBridgePublisher.from_environment(settings.central_bus_name, concurrency=1),
        boto3.client("sqs"),
        failpoint=failpoint,
    )


def drain(queue_url: str) -> list[dict[str, Any]]:
    """Every message now in the queue (moto delivers rule targets synchronously)."""
    sqs = boto3.client("sqs")
    bodies: list[dict[str, Any]] = []
    while True:
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=SQS_RECEIVE_MAX, WaitTimeSeconds=0
        ).get("Messages", [])
        if not messages:
            return bodies
        bodies.extend(json.loads(m["Body"]) for m in messages)
        sqs.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )


def run_until(v: Validator, received: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while v.stats.received < received:
        assert time.monotonic() < deadline, f"validator received {v.stats.received} of {received}"
        if not v.poll_once():
            time.sleep(0.05)


@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_valid_events_reach_consumers_exactly_once_through_a_validator_restart(
    pg_url: URL, moto_endpoint: str, tmp_path: Path, capture: str
) -> None:
    # Given: the topology, the schemas generated from the table; the delete events' schema
    # is left out (an unknown DetailType), as a team that has not agreed on one yet would
    settings, engine, applied, archive_url = setup(pg_url, tmp_path, capture)
    assert cmd_schemas_generate(settings, argparse.Namespace(dir=None, force=False)) == 0
    (settings.schemas_dir / "public.orders.delete.json").unlink()

    # When: the legacy application writes, capture publishes to the producer bus ...
    with engine.begin() as connection:
        for n in range(1, 13):
            connection.execute(
                text(
                    "INSERT INTO orders VALUES (:n, :n * 1.5, 'new', now(), '\\x00ff'::bytea, "
                    "gen_random_uuid(), '{\"gift\": true, \"ratio\": 0.1000}', '{a,NULL}', 2.5)"
                ),
                {"n": n},
            )
        connection.execute(text("UPDATE orders SET status = 'paid', total = 99.99 WHERE id <= 2"))
        connection.execute(text("DELETE FROM orders WHERE id = 12"))
    # ... then adds a column the schemas do not know (a contract change nobody announced)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE orders ADD COLUMN coupon text"))
        connection.execute(
            text(
                "INSERT INTO orders VALUES (13, 1, 'new', now(), NULL, NULL, NULL, "
                "NULL, NULL, 'FREE')"
            )
        )
    worker = Worker(
        settings,
        source_for(settings, engine),
        EventBridgePublisher.from_environment(settings.event_bus_name, concurrency=1),
    )
    deadline = time.monotonic() + 15
    while worker.stats.published < 12 + 2 + 1 + 1 + 1:
        assert time.monotonic() < deadline, f"captured {worker.stats.published} events"
        worker.step()
    worker.source.close()
    drop_slot(engine, settings)
    # ... and somebody puts a malformed event on the producer bus by hand
    boto3.client("events").put_events(
        Entries=[
            {
                "Source": SOURCE,
                "DetailType": "public.orders.insert",
                "EventBusName": settings.event_bus_name,
                "Detail": json.dumps(
                    {
                        "id": "hand-made",
                        "op": "insert",
                        "table": "public.orders",
                        "after": {"id": "ten", "total": 10},
                    }
                ),
            }
        ]
    )
    # inserts, updates, the schema change (the coupon column); then a delete, the insert with a
    # coupon, the hand-made
    valid = 12 + 2 + 1

    # ... and the validator handles a first batch (ten messages), then crashes in the second
    # after its PutEvents, before recording the outcome or deleting the messages
    first = validator(settings, engine, crash_at("published", occurrence=2))
    assert first.poll_once() == 10
    with pytest.raises(Crash):
        first.poll_once()
    # Then it restarts; the crashed batch comes back after its visibility timeout (1 s)
    second = validator(settings, engine)
    run_until(second, valid + 3 - 10)
    assert second.poll_once() == 0 and drain(applied.validation_queue_url) == []

    # Then: each valid event reached each consumer exactly once, as valid.<source>
    view_url = next(iter(applied.consumer_queue_urls.values()))
    view, archive = drain(view_url), drain(archive_url)
    valid_ids = Counter(e["detail"]["id"] for e in archive)
    assert len(valid_ids) == valid and set(valid_ids.values()) == {1}
    # (the view subscribes to inserts and updates: not the schema change)
    schema_ids = {e["detail"]["id"] for e in archive if e["detail"]["op"] == "schema"}
    assert len(schema_ids) == 1
    assert Counter(e["detail"]["id"] for e in view) == valid_ids - Counter(schema_ids)
    assert {e["source"] for e in archive} == {"valid." + SOURCE}
    assert Counter(e["detail-type"] for e in view) == {
        "public.orders.insert": 12,
        "public.orders.update": 2,
    }
    insert = next(
        e["detail"]
        for e in view
        if e["detail"]["key"] == {"id": 3} and e["detail"]["op"] == "insert"
    )
    assert insert["after"]["total"] == "4.50" and insert["after"]["photo"] == "AP8="
    assert insert["after"]["meta"] == {"gift": True, "ratio": 0.1}
    # ... the crashed batch's events are in doubt (sent, never confirmed), not sent again
    in_doubt = {c.key for c in validation_state.in_doubt(engine, second.tables)}
    assert second.stats.in_doubt == len(in_doubt) > 0 and second.stats.republished == 0
    assert first.stats.republished + len(in_doubt) == valid
    with engine.connect() as connection:
        claims = connection.execute(select(second.tables.republished.c.status)).scalars().all()
    assert Counter(claims) == {"published": valid - len(in_doubt), "claimed": len(in_doubt)}
    # ... and the invalid and unknown ones are dead letters, with every error
    letters = {
        x.letter.event_id: x.letter for x in validation_state.dead_letters(engine, second.tables)
    }
    assert len(letters) == 3
    hand_made = letters["hand-made"]
    assert "detail: 'committed_at' is a required property" in hand_made.errors
    assert "detail.after.id: 'ten' is not of type 'integer'" in hand_made.errors
    assert "detail.after.total: 10 is not of type 'string'" in hand_made.errors
    assert len(hand_made.errors) >= 8
    [coupon] = [
        x
        for x in letters.values()
        if x.detail_type == "public.orders.insert" and x.event_id != "hand-made"
    ]
    assert coupon.errors == (
        "detail.after: Additional properties are not allowed ('coupon' was unexpected)",
    )
    [deleted] = [x for x in letters.values() if x.detail_type == "public.orders.delete"]
    assert deleted.reason.startswith("no schema for DetailType 'public.orders.delete'")


def test_a_crash_before_putevents_leaves_events_in_doubt_for_an_operator(
    pg_url: URL, moto_endpoint: str, tmp_path: Path
) -> None:
    settings, engine, applied, archive_url = setup(pg_url, tmp_path)
    (settings.schemas_dir).mkdir()
    (settings.schemas_dir / "OrderPlaced.json").write_text(
        json.dumps(
            {
                "type": "object",
                "required": ["id", "total"],
                "properties": {"id": {"type": "string"}, "total": {"type": "string"}},
            }
        )
    )
    sqs = boto3.client("sqs")

    def body(detail: dict[str, Any], source: str = SOURCE) -> str:
        return json.dumps(
            {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "OrderPlaced",
                "source": source,
                "time": "2026-11-28T12:00:00Z",
                "detail": detail,
            }
        )

    # Given: an event twice (at-least-once delivery upstream) and one already validated
    for message in (
        body({"id": "o-1", "total": "1.00"}),
        body({"id": "o-1", "total": "1.00"}),
        body({"id": "o-2", "total": "2.00"}, source="valid." + SOURCE),
    ):
        sqs.send_message(QueueUrl=applied.validation_queue_url, MessageBody=message)
    # When: the validator dies after claiming, before PutEvents
    with pytest.raises(Crash):
        validator(settings, engine, crash_at("claimed")).poll_once()
    restarted = validator(settings, engine)
    run_until(restarted, 3)
    # Then: nothing was sent twice, or at all: the claim is in doubt
    assert drain(archive_url) == []
    assert restarted.stats.in_doubt == 1 and restarted.stats.already_valid == 1
    assert restarted.stats.in_doubt + restarted.stats.duplicates == 2
    [doubt] = validation_state.in_doubt(engine, restarted.tables)
    assert doubt.key == (SOURCE, "o-1") and doubt.entry is not None
    # An operator who checked the consumers resends it: it arrives once, and is settled
    sent, refused = resend_in_doubt(engine, restarted.tables, restarted.publisher, [doubt])
    assert (sent, refused) == (1, [])
    [arrived] = drain(archive_url)
    assert arrived["source"] == "valid." + SOURCE and arrived["detail"] == {
        "id": "o-1",
        "total": "1.00",
    }
    assert validation_state.in_doubt(engine, restarted.tables) == []
    assert counts(engine, restarted.tables) == {"published": 1, "dead_letters": 0}


def counts(engine: Engine, tables: StateTables) -> dict[str, int]:
    """Claims by status, and dead letters."""
    table = tables.republished
    with engine.connect() as connection:
        result = {
            str(status): int(n)
            for status, n in connection.execute(
                select(table.c.status, func.count()).group_by(table.c.status)
            )
        }
        result["dead_letters"] = int(
            connection.execute(
                select(func.count()).select_from(tables.validation_dead_letters)
            ).scalar_one()
        )
    return result

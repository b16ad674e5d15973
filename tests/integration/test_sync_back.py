"""Sync back end to end: new-system events on EventBridge -> rule -> SQS -> legacy rows, with
the capture worker running beside it and not echoing those writes."""

from __future__ import annotations

import json
import threading
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from cdc.bus.publishers.file import NullPublisher
from cdc.capture.worker import Worker
from cdc.core.dialects import POSTGRESQL
from cdc.core.settings import Settings
from cdc.core.state import state_tables
from sync_back.consumer import Consumer
from sync_back.mapping import load_mappings
from tests.integration.helpers import prepared, running, settings_for_mode, source_for

pytestmark = pytest.mark.integration

ORDERS = (
    "CREATE TABLE orders (id int PRIMARY KEY, total numeric(10,2) NOT NULL, "
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
conflict = "{policy}"
root = "order"
[sync_back.mappings.columns]
id = {{ path = "id", type = "int" }}
total = {{ path = "total", type = "numeric" }}
customer = {{ path = "customer.name", type = "text", max_length = 200 }}
updated_at = {{ path = "updated_at", type = "timestamptz" }}
note = {{ path = "note", type = "text", required = false }}

[[sync_back.mappings]]
detail_type = "OrderCancelled"
source = "shop.orders"
table = "orders"
op = "delete"
key = ["id"]
version_column = "updated_at"
root = "order"
[sync_back.mappings.columns]
id = {{ path = "id", type = "int" }}
updated_at = {{ path = "updated_at", type = "timestamptz" }}
"""


def config(tmp_path: Path, policy: str = "newer_wins") -> str:
    path = tmp_path / f"cdc-{policy}.toml"
    path.write_text(MAPPING.format(policy=policy))
    return str(path)


def order_detail(
    order_id: int, total: str, hour: int, name: str = "Ada", event_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": event_id or str(uuid.uuid4()),
        "order": {
            "id": order_id,
            "total": total,
            "customer": {"name": name},
            "updated_at": f"2026-11-28T{hour:02d}:00:00Z",
        },
    }


def envelope(
    detail: dict[str, Any], detail_type: str = "OrderPlaced", source: str = "shop.orders"
) -> str:
    return json.dumps(
        {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": detail_type,
            "source": source,
            "account": "123456789012",
            "time": "2026-11-28T12:00:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": detail,
        }
    )


def make_consumer(settings: Settings, engine: Engine, sqs: Any = None) -> Consumer:
    return Consumer(
        settings,
        engine,
        state_tables(POSTGRESQL, settings.state_schema),
        load_mappings(settings.sync_back, settings.default_schema),
        sqs,
    )


def rows(engine: Engine) -> dict[int, tuple[Any, ...]]:
    with engine.connect() as connection:
        return {
            r[0]: tuple(r[1:])
            for r in connection.execute(
                text(
                    "SELECT id, total::text, customer, to_char(updated_at AT TIME ZONE 'UTC', "
                    "'HH24'), note FROM orders ORDER BY id"
                )
            )
        }


@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_new_system_events_reach_legacy_rows_and_are_not_echoed(
    pg_url: URL, moto_endpoint: str, tmp_path: Path, capture: str
) -> None:
    # Given: the new system's bus with a rule feeding a queue, a capture worker running
    suffix = uuid.uuid4().hex[:8]
    events, sqs = boto3.client("events"), boto3.client("sqs")
    bus = f"new-system-{suffix}"
    events.create_event_bus(Name=bus)
    queue = sqs.create_queue(QueueName=f"sync-{suffix}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    events.put_rule(
        Name=f"sync-{suffix}",
        EventBusName=bus,
        EventPattern=json.dumps({"source": ["shop.orders"]}),
    )
    events.put_targets(Rule=f"sync-{suffix}", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    settings = settings_for_mode(
        pg_url,
        capture,
        "orders",
        config=config(tmp_path),
        sync_queue_url=queue,
        sync_wait_seconds="0",
    )
    engine = prepared(settings, ORDERS)
    captured = NullPublisher()
    published: list[dict[str, Any]] = []

    class Recorder(NullPublisher):
        def publish(self, entries):  # type: ignore[no-untyped-def]
            published.extend(json.loads(e.detail) for e in entries)
            return captured.publish(entries)

    worker = Worker(settings, source_for(settings, engine), Recorder())
    consumer = make_consumer(settings, engine, sqs)

    # When: the new system publishes orders (one of them twice) and a cancellation
    details = [
        order_detail(1, "10.50", 9),
        order_detail(2, "99.00", 9, name="O'Brien; DROP TABLE orders;--"),
    ]
    entries = [
        {
            "Source": "shop.orders",
            "DetailType": "OrderPlaced",
            "Detail": json.dumps(d),
            "EventBusName": bus,
        }
        for d in details
    ]
    entries.append(entries[0])
    cancel = order_detail(2, "99.00", 10)
    entries.append(
        {
            "Source": "shop.orders",
            "DetailType": "OrderCancelled",
            "Detail": json.dumps(cancel),
            "EventBusName": bus,
        }
    )
    with running(worker.run) as thread:
        assert events.put_events(Entries=entries)["FailedEntryCount"] == 0
        deadline = time.monotonic() + 30
        while consumer.stats.received < 4 and time.monotonic() < deadline:
            consumer.poll_once()
        # ... and somebody edits the legacy table directly, as the old screens do
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO orders VALUES (7, 1.00, 'legacy', now(), 'x')"))
        deadline = time.monotonic() + 20
        while not published and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # anything the sync-back writes would have produced has come by now
        worker.stop.set()
        thread.join(10)
    worker.source.close()

    # Then: the legacy rows are right, the duplicate was applied once
    assert rows(engine) == {
        1: ("10.50", "Ada", "09", None),
        7: ("1.00", "legacy", rows(engine)[7][2], "x"),
    }
    assert consumer.stats.applied == 3 and consumer.stats.duplicates == 1
    # ... and capture published the legacy edit only, none of the sync-back writes
    assert [(d["op"], d["key"]) for d in published] == [("insert", {"id": 7})]
    assert sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0).get("Messages") is None


def test_duplicates_out_of_order_apply_as_once_in_version_order(
    pg_url: URL, tmp_path: Path
) -> None:
    settings = settings_for_mode(pg_url, "changelog", "orders", config=config(tmp_path))
    engine = prepared(settings, ORDERS)
    consumer = make_consumer(settings, engine)
    versions = [order_detail(1, f"{hour}.00", hour) for hour in (8, 9, 10, 11)]
    # Every event twice, newest first, then oldest first
    for detail in [*reversed(versions), *versions]:
        consumer.handle(envelope(detail), str(uuid.uuid4()))
    assert rows(engine) == {1: ("11.00", "Ada", "11", None)}
    assert consumer.stats.applied == 1 and consumer.stats.duplicates == 4
    assert consumer.stats.skipped == 3  # the older ones, stale on first sight


@pytest.mark.parametrize("prefix", ["", "valid.", "valid.valid."])
def test_events_of_our_own_capture_are_ignored(pg_url: URL, tmp_path: Path, prefix: str) -> None:
    # A mapping that names no source: our own events, republished by the validator as
    # valid.<source>, would reach it
    source_less = MAPPING.format(policy="newer_wins").replace('source = "shop.orders"\n', "")
    path = tmp_path / "any-source.toml"
    path.write_text(source_less)
    settings = settings_for_mode(pg_url, "changelog", "orders", config=str(path))
    engine = prepared(settings, ORDERS)
    consumer = make_consumer(settings, engine)
    own = envelope(order_detail(1, "1.00", 9), source=prefix + settings.event_source)
    assert consumer.handle(own, "m1") == "own_event"
    assert rows(engine) == {} and consumer.dead_letters() == []
    assert consumer.stats.own_events == 1
    other = envelope(order_detail(2, "2.00", 9), source=prefix + "shop.orders")
    assert consumer.handle(other, "m2") == "applied"


@pytest.mark.parametrize(
    ("policy", "expected_total", "outcome"),
    [
        ("newer_wins", "30.00", "applied"),  # the event is newer than the legacy edit
        ("new_system_wins", "30.00", "applied"),
        ("legacy_wins", "20.00", "skip_conflict"),  # the legacy edited the row since we wrote it
        ("park", "20.00", "parked"),
    ],
)
def test_conflict_policies(
    pg_url: URL, tmp_path: Path, policy: str, expected_total: str, outcome: str
) -> None:
    settings = settings_for_mode(pg_url, "changelog", "orders", config=config(tmp_path, policy))
    engine = prepared(settings, ORDERS)
    consumer = make_consumer(settings, engine)
    # Sync back writes version 09:00, the legacy application edits the row at 10:00 ...
    assert consumer.handle(envelope(order_detail(1, "10.00", 9)), "m1") == "applied"
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE orders SET total = 20, updated_at = '2026-11-28T10:00:00Z' WHERE id = 1")
        )
    # ... then the new system sends version 11:00 of the same order
    assert consumer.handle(envelope(order_detail(1, "30.00", 11)), "m2") == outcome
    assert rows(engine)[1][0] == expected_total
    # A stale event (08:00) never overwrites newer data under newer_wins
    stale = consumer.handle(envelope(order_detail(1, "1.00", 8)), "m3")
    if policy == "newer_wins":
        assert stale == "skip_stale" and rows(engine)[1][0] == expected_total
    if policy == "park":
        with engine.connect() as connection:
            parked = connection.execute(text("SELECT count(*) FROM cdc.conflicts")).scalar()
        assert parked == 2


CORPUS_TABLE = (
    "CREATE TABLE orders (id int PRIMARY KEY, total numeric(14,2), customer text, "
    "updated_at timestamptz NOT NULL, placed_local timestamp, ship_date date, ref uuid, "
    "paid boolean, weight double precision, meta jsonb, note text, first_sku text)"
)


def test_malformed_and_hostile_events_against_the_real_database(
    pg_url: URL, tmp_path: Path
) -> None:
    from tests.unit.test_sync_back_rows import HOSTILE_BUT_VALID, MALFORMED, MAPPINGS, body

    settings = settings_for_mode(pg_url, "changelog", "orders")
    engine = prepared(settings, CORPUS_TABLE)
    consumer = Consumer(
        settings, engine, state_tables(POSTGRESQL, settings.state_schema), MAPPINGS, None
    )
    # Every malformed event: a dead letter naming the field, nothing written, no crash
    for number, (name, text_, _needle) in enumerate(MALFORMED):
        assert consumer.handle(text_, f"bad-{number}") == "dead_letter", name
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM orders")).scalar() == 0
    letters = {letter.message_id: letter for letter in consumer.dead_letters(limit=1000)}
    assert len(letters) == len(MALFORMED) >= 40
    for number, (name, _, needle) in enumerate(MALFORMED):
        assert needle in letters[f"bad-{number}"].reason, name
    # Hostile but valid text is stored exactly as sent, bound as parameters
    for number, (name, value) in enumerate(HOSTILE_BUT_VALID):
        event = body(
            {
                "id": f"hostile-{number}",
                "order.id": 1000 + number,
                "order.customer.name": value,
                "order.note": value,
                "order.meta": {value: [value]},
            }
        )
        assert consumer.handle(event, f"ok-{number}") == "applied", name
        with engine.connect() as connection:
            stored = connection.execute(
                text("SELECT customer, note, meta FROM orders WHERE id = :i"), {"i": 1000 + number}
            ).one()
        assert stored == (value, value, {value: [value]}), name


def test_two_consumers_on_the_same_events_apply_each_once(pg_url: URL, tmp_path: Path) -> None:
    settings = settings_for_mode(pg_url, "changelog", "orders", config=config(tmp_path))
    engine = prepared(settings, ORDERS)
    bodies = [envelope(order_detail(n, f"{n}.00", 9)) for n in range(1, 41)]
    consumers = [make_consumer(settings, engine) for _ in range(2)]

    def work(consumer: Consumer) -> None:
        for number, body in enumerate(bodies):
            consumer.handle(body, f"m{number}")

    threads = [threading.Thread(target=work, args=(c,)) for c in consumers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(c.stats.applied for c in consumers) == 40
    assert sum(c.stats.duplicates for c in consumers) == 40
    assert len(rows(engine)) == 40


def test_dead_letters_are_replayed_once_the_mapping_is_fixed(pg_url: URL, tmp_path: Path) -> None:
    settings = settings_for_mode(pg_url, "changelog", "orders", config=config(tmp_path))
    engine = prepared(settings, ORDERS)
    consumer = make_consumer(settings, engine)
    renamed = envelope(order_detail(5, "5.00", 9), detail_type="OrderSubmitted")
    assert consumer.handle(renamed, "m-renamed") == "dead_letter"
    [letter] = consumer.dead_letters()
    assert "no mapping for detail-type 'OrderSubmitted'" in letter.reason
    # The mapping learns the new name; the replay applies the stored body and clears it
    fixed = tmp_path / "fixed.toml"
    fixed.write_text(
        MAPPING.format(policy="newer_wins").replace('"OrderPlaced"', '"OrderSubmitted"')
    )
    settings = settings.model_copy(
        update={"sync_back": tomllib.loads(fixed.read_text())["sync_back"]}
    )
    replaying = make_consumer(settings, engine)
    assert replaying.replay(replaying.dead_letters()) == {"m-renamed": "applied"}
    assert replaying.dead_letters() == [] and rows(engine)[5][0] == "5.00"


def test_a_write_the_database_refuses_is_a_dead_letter_and_its_batch_goes_on(
    pg_url: URL, tmp_path: Path
) -> None:
    settings = settings_for_mode(pg_url, "changelog", "orders", config=config(tmp_path))
    engine = prepared(settings, ORDERS)
    consumer = make_consumer(settings, engine)
    batch = [
        (envelope(order_detail(1, "1.00", 9)), "m1"),
        (envelope(order_detail(2, "123456789012.00", 9)), "m2"),  # too large for numeric(10,2)
        (envelope(order_detail(3, "3.00", 9)), "m3"),
    ]
    assert consumer.handle_batch(batch) == ["applied", "dead_letter", "applied"]
    assert sorted(rows(engine)) == [1, 3]
    [letter] = consumer.dead_letters()
    assert letter.message_id == "m2"
    assert "order.total (column total): numeric field overflow" in letter.reason


ITEMS = (
    "CREATE TABLE items (id int PRIMARY KEY, qty int, price numeric(6,2), code varchar(5), "
    "label text NOT NULL DEFAULT 'none', version int NOT NULL)"
)
ITEMS_MAPPING = """
[[sync_back.mappings]]
detail_type = "ItemSet"
table = "items"
op = "upsert"
key = ["id"]
version_column = "version"
root = "item"
[sync_back.mappings.columns]
id = { path = "id", type = "int" }
qty = { path = "stock.quantity", type = "int" }
price = { path = "price.amount", type = "numeric" }
code = { path = "sku", type = "text" }
label = { path = "label", type = "text", required = false }
version = { path = "version", type = "int" }
"""


def item(item_id: int, **changed: Any) -> str:
    fields: dict[str, Any] = {
        "id": item_id,
        "stock": {"quantity": 5},
        "price": {"amount": "9.99"},
        "sku": "AB-1",
        "version": 1,
    }
    fields.update(changed)
    return envelope({"id": str(uuid.uuid4()), "item": fields}, "ItemSet", "shop.items")


@pytest.mark.parametrize(
    ("changed", "where", "message"),
    [
        (
            {"stock": {"quantity": 2**31}},
            "item.stock.quantity (column qty)",
            "integer out of range",
        ),
        (
            {"price": {"amount": "12345.67"}},
            "item.price.amount (column price)",
            "numeric field overflow",
        ),
        (
            {"sku": "ABCDEF"},
            "item.sku (column code)",
            "value too long for type character varying(5)",
        ),
        # PostgreSQL names this column itself
        ({"label": None}, "item.label (column label)", 'null value in column "label"'),
    ],
)
def test_the_dead_letter_of_a_value_the_database_refuses_names_its_column(
    pg_url: URL, tmp_path: Path, changed: dict[str, Any], where: str, message: str
) -> None:
    path = tmp_path / "items.toml"
    path.write_text(ITEMS_MAPPING)
    settings = settings_for_mode(pg_url, "changelog", "items", config=str(path))
    engine = prepared(settings, ITEMS)
    consumer = make_consumer(settings, engine)
    # A batch with one value the legacy column cannot hold: its event is a dead letter that
    # names the Detail path and the column, the rest of the batch is applied
    batch = [(item(1), "m1"), (item(2, **changed), "m2"), (item(3, sku="ABCDE   "), "m3")]
    assert consumer.handle_batch(batch) == ["applied", "dead_letter", "applied"]
    [letter] = consumer.dead_letters()
    assert letter.message_id == "m2"
    assert f"the legacy database refused the write: {where}: {message}" in letter.reason
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT id, code FROM items ORDER BY id")).all()
    assert [tuple(row) for row in stored] == [(1, "AB-1"), (3, "ABCDE")]


# -- the batch path: a received batch in one transaction, as if applied one event at a time --

BATCH_TABLES = (
    "CREATE TABLE orders (id int PRIMARY KEY, total numeric(10,2) NOT NULL "
    "CHECK (total >= 0), customer text, updated_at timestamptz NOT NULL, note text);"
    "CREATE TABLE lines (order_id int NOT NULL, sku text NOT NULL, qty int, "
    "version int NOT NULL, PRIMARY KEY (order_id, sku))"
)


def batch_consumer(pg_url: URL) -> Consumer:
    from tests.unit.test_sync_back_applier import make_consumer as consumer_for

    settings = settings_for_mode(pg_url, "changelog", "orders,lines")
    return consumer_for(settings, prepared(settings, BATCH_TABLES))


def empty(consumer: Consumer) -> None:
    s = consumer.state
    with consumer.engine.begin() as connection:
        connection.execute(text("SET LOCAL session_replication_role = replica"))  # no triggers
        connection.execute(
            text(
                f"TRUNCATE orders, lines, {s.qualified(s.inbox)}, {s.qualified(s.synced_rows)}, "
                f"{s.qualified(s.conflicts)}, {s.qualified(s.changelog)}, "
                f"{s.qualified(s.sync_dead_letters)} RESTART IDENTITY"
            )
        )


@pytest.mark.parametrize("seed", range(3))
def test_batches_leave_what_one_event_at_a_time_leaves(pg_url: URL, seed: int) -> None:
    from tests.unit.test_sync_back_applier import play, scenario, state_of

    consumer = batch_consumer(pg_url)
    steps = scenario(seed)
    one_at_a_time = play(consumer, steps, 1)
    expected = state_of(consumer)
    empty(consumer)
    assert play(consumer, steps, 10) == one_at_a_time
    assert state_of(consumer) == expected
    assert expected["dead_letters"] == [] and expected["changes"]
    assert {outcome for _, outcome in expected["inbox"]} >= {"applied", "skip_stale"}


def test_one_batch_with_duplicates_repeated_keys_mixed_policies_and_a_refused_write(
    pg_url: URL,
) -> None:
    from tests.unit.test_sync_back_applier import legacy_edit, order, state_of

    consumer = batch_consumer(pg_url)
    consumer.handle_batch([(order("OrderPlaced", n, 9), f"seed{n}") for n in range(1, 4)])
    legacy_edit(consumer.engine, 2, 10, "20.00")
    legacy_edit(consumer.engine, 3, 10, "20.00")
    again = order("OrderPlaced", 1, 11, "11.00", event_id="e-again")
    batch = [
        (again, "m1"),
        (order("OrderPlaced", 1, 12, "12.00"), "m2"),  # same key, applied after m1
        (again, "m3"),  # duplicate within the batch
        (order("OrderAdjusted", 2, 11, "30.00"), "m4"),  # legacy_wins: legacy edited it
        (order("OrderPlaced", 4, 9, "-1.00"), "m5"),  # refused: CHECK (total >= 0)
        (order("OrderReviewed", 3, 11, "30.00"), "m6"),  # park: legacy edited it
        (order("OrderCancelled", 1, 13), "m7"),  # same key again: deleted last
    ]
    assert consumer.handle_batch(batch) == [
        "applied",
        "applied",
        "duplicate",
        "skip_conflict",
        "dead_letter",
        "parked",
        "applied",
    ]
    state = state_of(consumer)
    assert [row[:2] for row in state["orders"]] == [(2, "20.00"), (3, "20.00")]
    [letter] = consumer.dead_letters()
    assert letter.message_id == "m5" and "orders_total_check" in letter.reason
    ops = [
        (json.loads(after or before)["id"], op)
        for _, op, before, after, origin in state["changes"]
        if origin == "sync_back"
    ]
    assert ops[-3:] == [(1, "update"), (1, "update"), (1, "delete")]
    assert [row[1] for row in state["conflicts"]] == ['{"id":3}']


def test_keys_the_database_takes_for_one_row_are_decided_as_one_row(
    pg_url: URL, tmp_path: Path
) -> None:
    settings = settings_for_mode(pg_url, "changelog", "codes")
    engine = prepared(
        settings,
        "CREATE EXTENSION IF NOT EXISTS citext; CREATE TABLE codes "
        "(code citext PRIMARY KEY, label text, version int NOT NULL); "
        "INSERT INTO codes VALUES ('Abc', 'legacy', 10)",
    )
    consumer = Consumer(
        settings,
        engine,
        state_tables(POSTGRESQL, settings.state_schema),
        load_mappings(
            tomllib.loads("""
[[sync_back.mappings]]
detail_type = "CodeSet"
op = "upsert"
table = "codes"
key = ["code"]
version_column = "version"
[sync_back.mappings.columns]
code = { path = "code", type = "text" }
label = { path = "label", type = "text" }
version = { path = "version", type = "int" }
""")["sync_back"],
            settings.default_schema,
        ),
    )

    def code(value: str, version: int) -> str:
        return json.dumps(
            {
                "id": str(uuid.uuid4()),
                "detail-type": "CodeSet",
                "source": "s",
                "detail": {"code": value, "label": f"{value} {version}", "version": version},
            }
        )

    batch = [
        (code("abc", 9), "m1"),
        (code("xyz", 5), "m2"),
        (code("XYZ", 4), "m3"),
        (code("aBC", 11), "m4"),
    ]
    assert consumer.handle_batch(batch) == ["skip_stale", "applied", "skip_stale", "applied"]
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT lower(code::text), label, version FROM codes ORDER BY 1")
        ).all()
    assert [tuple(r) for r in rows] == [("abc", "aBC 11", 11), ("xyz", "xyz 5", 5)]


def test_a_fifo_queue_keeps_each_keys_events_in_order(
    pg_url: URL, moto_endpoint: str, tmp_path: Path
) -> None:
    """With a FIFO queue (message group per key), two consumers apply each key's events in the
    order they were sent, even under new_system_wins, where every event overwrites the row."""
    sqs = boto3.client("sqs")
    queue = sqs.create_queue(
        QueueName=f"sync-{uuid.uuid4().hex[:8]}.fifo", Attributes={"FifoQueue": "true"}
    )["QueueUrl"]
    settings = settings_for_mode(
        pg_url,
        "changelog",
        "orders",
        config=config(tmp_path, "new_system_wins"),
        sync_queue_url=queue,
        sync_wait_seconds="0",
    )
    engine = prepared(
        settings, ORDERS + "; CREATE TABLE writes (id int, total numeric, n serial PRIMARY KEY)"
    )
    with engine.begin() as connection:  # every write to orders, in the order it happened
        connection.execute(
            text(
                "CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "INSERT INTO writes (id, total) VALUES (NEW.id, NEW.total); RETURN NEW; END $$"
            )
        )
        connection.execute(
            text(
                "CREATE TRIGGER audit AFTER INSERT OR UPDATE ON orders "
                "FOR EACH ROW EXECUTE FUNCTION audit()"
            )
        )
    sent: dict[int, list[str]] = {}
    for step in range(8):
        for order in (1, 2, 3):
            total = f"{order}{step}.00"
            detail = order_detail(order, total, 9 - step)  # versions go back: order is all
            sent.setdefault(order, []).append(total)
            sqs.send_message(
                QueueUrl=queue,
                MessageBody=envelope(detail),
                MessageGroupId=f"orders-{order}",
                MessageDeduplicationId=str(detail["id"]),
            )
    consumers = [make_consumer(settings, engine, boto3.client("sqs")) for _ in range(2)]

    def work(consumer: Consumer) -> None:
        idle = 0
        while idle < 5:
            idle = 0 if consumer.poll_once() else idle + 1

    threads = [threading.Thread(target=work, args=(c,)) for c in consumers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with engine.connect() as connection:
        writes = connection.execute(text("SELECT id, total::text FROM writes ORDER BY n")).all()
    for order, totals in sent.items():
        assert [t for i, t in writes if i == order] == totals
    assert {n: r[0] for n, r in rows(engine).items()} == {1: "17.00", 2: "27.00", 3: "37.00"}

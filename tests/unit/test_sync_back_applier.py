"""The applier's batch path against SQLite (the embedded default): a received batch in one
transaction leaves the legacy table, the inbox, the synced versions, the parked conflicts and
the change log exactly as applying its events one at a time would.

``scenario`` and ``state_of`` are shared with the PostgreSQL tests in
``tests/integration/test_sync_back.py``."""

from __future__ import annotations

import json
import random
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from cdc.capture import triggers
from cdc.capture.catalog import read_table
from cdc.core import database
from cdc.core.dialects import SQLITE, dialect_of
from cdc.core.settings import Settings, load_settings
from cdc.core.state import state_tables
from sync_back.consumer import Consumer
from sync_back.mapping import load_mappings

# One legacy table written by five event types, one per conflict policy (and a delete).
MAPPINGS = """
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
customer = { path = "customer", type = "text" }
updated_at = { path = "updated_at", type = "timestamptz" }
note = { path = "note", type = "text", required = false }

[[sync_back.mappings]]
detail_type = "OrderAdjusted"
source = "shop.orders"
table = "orders"
op = "upsert"
key = ["id"]
version_column = "updated_at"
conflict = "legacy_wins"
root = "order"
[sync_back.mappings.columns]
id = { path = "id", type = "int" }
total = { path = "total", type = "numeric" }
updated_at = { path = "updated_at", type = "timestamptz" }

[[sync_back.mappings]]
detail_type = "OrderReviewed"
source = "shop.orders"
table = "orders"
op = "upsert"
key = ["id"]
version_column = "updated_at"
conflict = "park"
root = "order"
[sync_back.mappings.columns]
id = { path = "id", type = "int" }
total = { path = "total", type = "numeric" }
customer = { path = "customer", type = "text" }
updated_at = { path = "updated_at", type = "timestamptz" }

[[sync_back.mappings]]
detail_type = "OrderForced"
source = "shop.orders"
table = "orders"
op = "upsert"
key = ["id"]
version_column = "updated_at"
conflict = "new_system_wins"
root = "order"
[sync_back.mappings.columns]
id = { path = "id", type = "int" }
total = { path = "total", type = "numeric" }
customer = { path = "customer", type = "text" }
updated_at = { path = "updated_at", type = "timestamptz" }

[[sync_back.mappings]]
detail_type = "OrderCancelled"
source = "shop.orders"
table = "orders"
op = "delete"
key = ["id"]
version_column = "updated_at"
root = "order"
[sync_back.mappings.columns]
id = { path = "id", type = "int" }
updated_at = { path = "updated_at", type = "timestamptz" }

[[sync_back.mappings]]
detail_type = "LineAdded"
source = "shop.orders"
table = "lines"
op = "upsert"
key = ["order_id", "sku"]
version_column = "version"
root = "line"
[sync_back.mappings.columns]
order_id = { path = "order_id", type = "int" }
sku = { path = "sku", type = "text" }
qty = { path = "qty", type = "int" }
version = { path = "version", type = "int" }
"""
SQLITE_DDL = (
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, total NUMERIC NOT NULL "
    "CHECK (total >= 0), customer TEXT, updated_at TEXT NOT NULL, note TEXT);"
    "CREATE TABLE lines (order_id INTEGER NOT NULL, sku TEXT NOT NULL, qty INTEGER, "
    "version INTEGER NOT NULL, PRIMARY KEY (order_id, sku))"
)
# Written by a mapping of its own in one test, with the key column name of orders.
CUSTOMERS = """
[[sync_back.mappings]]
detail_type = "CustomerSet"
op = "upsert"
table = "customers"
key = ["id"]
root = "customer"
[sync_back.mappings.columns]
id = { path = "id", type = "int" }
name = { path = "name", type = "text" }
"""
TYPES = [
    "OrderPlaced",
    "OrderAdjusted",
    "OrderReviewed",
    "OrderForced",
    "OrderCancelled",
    "LineAdded",
]


def envelope(detail_type: str, event_id: str, **fields: Any) -> str:
    root = "line" if detail_type == "LineAdded" else "order"
    return json.dumps(
        {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": detail_type,
            "source": "shop.orders",
            "account": "123456789012",
            "time": "2026-11-28T12:00:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": {"id": event_id, root: fields},
        }
    )


def order(
    detail_type: str,
    order_id: int,
    hour: int,
    total: str = "1.00",
    event_id: str | None = None,
    **more: Any,
) -> str:
    fields: dict[str, Any] = {"id": order_id, "updated_at": f"2026-11-28T{hour:02d}:00:00Z"}
    if detail_type != "OrderCancelled":
        fields["total"] = total
    if detail_type in ("OrderPlaced", "OrderReviewed", "OrderForced"):
        fields["customer"] = f"customer {order_id}"
    fields.update(more)
    return envelope(detail_type, event_id or str(uuid.uuid4()), **fields)


def make_consumer(settings: Settings, engine: Engine, more: str = "") -> Consumer:
    return Consumer(
        settings,
        engine,
        state_tables(dialect_of(engine), settings.state_schema),
        load_mappings(tomllib.loads(MAPPINGS + more)["sync_back"], settings.default_schema),
    )


def sqlite_consumer(path: Path, ddl: str = "", more: str = "") -> Consumer:
    """A legacy SQLite database with the two tables (and ``ddl``), the state tables and
    capture triggers."""
    settings = load_settings(
        {"CDC_DATABASE_URL": f"sqlite:///{path}", "CDC_TABLES": "orders,lines"}
    )
    engine = database.connect(settings)
    with engine.begin() as connection:
        connection.exec_driver_sql("SELECT 1")
        connection.connection.driver_connection.executescript(  # type: ignore[union-attr]
            f"{SQLITE_DDL};{ddl}"
        )
    database.migrate(engine, settings)
    triggers.install(
        engine, [read_table(engine, t) for t in settings.table_refs], settings.state_schema
    )
    return make_consumer(settings, engine, more)


def legacy_edit(engine: Engine, order_id: int, hour: int, total: str) -> None:
    """The legacy application changes a row itself (if it is there)."""
    stamp = f"2026-11-28T{hour:02d}:30:00+00:00"
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE orders SET total = :t, updated_at = :u WHERE id = :i"),
            {"t": total, "u": stamp, "i": order_id},
        )


@dataclass(frozen=True)
class LegacyEdit:
    order_id: int
    hour: int
    total: str


Step = tuple[str, str] | LegacyEdit  # a message (body, message id), or a legacy edit


def scenario(seed: int, events: int = 120) -> list[Step]:
    """Messages and, between them, legacy edits: few keys, so keys repeat within batches; all
    policies; deletes; redeliveries of earlier events, some within the same batch; a table
    with a composite key."""
    rng = random.Random(seed)
    out: list[Step] = []
    sent: list[str] = []
    for number in range(events):
        if sent and rng.random() < 0.15:
            out.append((rng.choice(sent[-12:]), f"again-{number}"))  # the same event again
            continue
        if rng.random() < 0.08:
            out.append(
                LegacyEdit(rng.randint(1, 4), rng.randint(0, 23), f"{rng.randint(0, 99)}.50")
            )
            continue
        detail_type = rng.choice(TYPES)
        if detail_type == "LineAdded":
            body = envelope(
                detail_type,
                str(uuid.uuid4()),
                order_id=rng.randint(1, 2),
                sku=rng.choice(["A", "B"]),
                qty=rng.randint(1, 9),
                version=rng.randint(1, 20),
            )
        else:
            body = order(
                detail_type,
                rng.randint(1, 4),
                rng.randint(0, 23),
                f"{rng.randint(0, 999)}.{rng.randint(0, 99):02d}",
                **({"note": rng.choice(["a", None])} if rng.random() < 0.3 else {}),
            )
        sent.append(body)
        out.append((body, f"m{number}"))
    return out


def play(consumer: Consumer, steps: list[Step], batch_size: int) -> list[str]:
    """Feed the messages in batches of ``batch_size`` (a legacy edit ends a batch); what
    became of each message."""
    results: list[str] = []
    batch: list[tuple[str, str]] = []

    def flush() -> None:
        nonlocal results, batch
        if batch:
            results += consumer.handle_batch(batch)
            batch = []

    for step in steps:
        if isinstance(step, LegacyEdit):
            flush()
            legacy_edit(consumer.engine, step.order_id, step.hour, step.total)
            continue
        batch.append(step)
        if len(batch) == batch_size:
            flush()
    flush()
    return results


def state_of(consumer: Consumer) -> dict[str, Any]:
    """Everything sync back leaves behind, in comparable form."""
    s = consumer.state
    q = s.qualified
    with consumer.engine.connect() as connection:

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in connection.execute(text(sql))]

        return {
            "orders": rows(
                "SELECT id, CAST(total AS TEXT), customer, CAST(updated_at AS TEXT), "
                "note FROM orders ORDER BY id"
            ),
            "lines": rows("SELECT order_id, sku, qty, version FROM lines ORDER BY order_id, sku"),
            "inbox": sorted(rows(f"SELECT event_id, outcome FROM {q(s.inbox)}")),
            "synced": sorted(
                rows(f"SELECT table_name, row_key, version, event_id FROM {q(s.synced_rows)}")
            ),
            "conflicts": sorted(rows(f"SELECT event_id, row_key, reason FROM {q(s.conflicts)}")),
            # The captured changes, in order: the writes kept the events' order.
            "changes": rows(
                f"SELECT table_name, op, CAST(before AS TEXT), CAST(after AS TEXT), "
                f"origin FROM {q(s.changelog)} ORDER BY id"
            ),
            "dead_letters": rows(f"SELECT message_id FROM {q(s.sync_dead_letters)}"),
        }


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_batches_leave_what_one_event_at_a_time_leaves(tmp_path: Path, seed: int) -> None:
    steps = scenario(seed)
    one = sqlite_consumer(tmp_path / "one.db")
    batched = sqlite_consumer(tmp_path / "batched.db")
    assert play(batched, steps, 10) == play(one, steps, 1)
    expected, got = state_of(one), state_of(batched)
    assert got == expected
    assert expected["dead_letters"] == [] and expected["changes"]
    assert {outcome for _, outcome in expected["inbox"]} >= {"applied", "skip_stale"}


def test_duplicates_within_one_batch_apply_once(tmp_path: Path) -> None:
    consumer = sqlite_consumer(tmp_path / "legacy.db")
    first = order("OrderPlaced", 1, 9, "9.00", event_id="e1")
    batch = [(first, "m1"), (order("OrderPlaced", 2, 9), "m2"), (first, "m3"), (first, "m4")]
    assert consumer.handle_batch(batch) == ["applied", "applied", "duplicate", "duplicate"]
    assert consumer.handle_batch(batch[:2]) == ["duplicate", "duplicate"]  # redelivered
    assert state_of(consumer)["orders"][0][:2] == (1, "9")
    assert consumer.stats.applied == 2 and consumer.stats.duplicates == 4


def test_events_for_one_key_in_one_batch_apply_in_order(tmp_path: Path) -> None:
    consumer = sqlite_consumer(tmp_path / "legacy.db")
    batch = [
        (order("OrderPlaced", 1, 9, "9.00"), "m1"),
        (order("OrderPlaced", 1, 11, "11.00"), "m2"),
        (order("OrderPlaced", 1, 10, "10.00"), "m3"),  # older than m2: stale by then
        (order("OrderCancelled", 2, 9), "m4"),  # no row yet: nothing to delete
        (order("OrderPlaced", 2, 10, "10.00"), "m5"),
        (order("OrderCancelled", 2, 12), "m6"),
        (order("OrderPlaced", 2, 13, "13.00"), "m7"),  # inserted again after the delete
    ]
    assert consumer.handle_batch(batch) == [
        "applied",
        "applied",
        "skip_stale",
        "applied",
        "applied",
        "applied",
        "applied",
    ]
    state = state_of(consumer)
    assert [row[:2] for row in state["orders"]] == [(1, "11"), (2, "13")]
    ops = [(json.loads(after or before)["id"], op) for _, op, before, after, _ in state["changes"]]
    assert ops == [(1, "insert"), (1, "update"), (2, "insert"), (2, "delete"), (2, "insert")]
    assert {origin for *_, origin in state["changes"]} == {"sync_back"}


def test_a_refused_write_in_the_middle_of_a_batch_is_a_dead_letter(tmp_path: Path) -> None:
    consumer = sqlite_consumer(tmp_path / "legacy.db")
    batch = [
        (order("OrderPlaced", 1, 9, "1.00"), "m1"),
        (order("OrderPlaced", 2, 9, "-5.00"), "m2"),  # the CHECK constraint refuses it
        (order("OrderPlaced", 1, 10, "3.00"), "m3"),
        (order("OrderPlaced", 3, 9, "3.00"), "m4"),
    ]
    assert consumer.handle_batch(batch) == ["applied", "dead_letter", "applied", "applied"]
    state = state_of(consumer)
    assert [row[:2] for row in state["orders"]] == [(1, "3"), (3, "3")]
    [letter] = consumer.dead_letters()
    assert letter.message_id == "m2" and "CHECK constraint failed" in letter.reason
    assert len(state["inbox"]) == 3  # the refused event holds no claim: a replay may apply it


def test_mixed_policies_in_one_batch(tmp_path: Path) -> None:
    consumer = sqlite_consumer(tmp_path / "legacy.db")
    # Sync back writes four orders at 09:00; the legacy application edits 1-3 at 10:30
    consumer.handle_batch([(order("OrderPlaced", n, 9), f"seed{n}") for n in range(1, 5)])
    for n in range(1, 4):
        legacy_edit(consumer.engine, n, 10, "20.00")
    batch = [
        (order("OrderPlaced", 1, 11, "30.00"), "m1"),  # newer_wins: newer, applied
        (order("OrderAdjusted", 2, 11, "30.00"), "m2"),  # legacy_wins: the legacy edited it
        (order("OrderReviewed", 3, 11, "30.00"), "m3"),  # park: the legacy edited it
        (order("OrderAdjusted", 4, 11, "30.00"), "m4"),  # legacy_wins, untouched: applied
        (order("OrderForced", 1, 8, "8.00"), "m5"),  # new_system_wins: even when stale
        (order("OrderReviewed", 4, 10, "10.00"), "m6"),  # park: stale after m4
    ]
    assert consumer.handle_batch(batch) == [
        "applied",
        "skip_conflict",
        "parked",
        "applied",
        "applied",
        "parked",
    ]
    state = state_of(consumer)
    assert [row[:2] for row in state["orders"]] == [(1, "8"), (2, "20"), (3, "20"), (4, "30")]
    assert sorted(row[1] for row in state["conflicts"]) == ['{"id":3}', '{"id":4}']
    inbox = dict(state["inbox"])
    assert sum(outcome == "parked" for outcome in inbox.values()) == 2


def test_keys_that_the_database_folds_together_are_read_as_sql_compares_them(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        {"CDC_DATABASE_URL": f"sqlite:///{tmp_path / 'legacy.db'}", "CDC_TABLES": "codes"}
    )
    engine = database.connect(settings)
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE codes (code TEXT PRIMARY KEY COLLATE NOCASE, "
                "label TEXT, version INTEGER NOT NULL)"
            )
        )
        connection.execute(text("INSERT INTO codes VALUES ('Abc', 'legacy', 10)"))
    database.migrate(engine, settings)
    consumer = Consumer(
        settings,
        engine,
        state_tables(SQLITE),
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

    # 'abc' is the row 'Abc' to the database; 'xyz' and 'XYZ' are one new row
    batch = [
        (code("abc", 9), "m1"),
        (code("xyz", 5), "m2"),
        (code("XYZ", 4), "m3"),
        (code("abc", 11), "m4"),
    ]
    assert consumer.handle_batch(batch) == ["skip_stale", "applied", "skip_stale", "applied"]
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT lower(code), label, version FROM codes ORDER BY 1")
        ).all()
    assert [tuple(r) for r in rows] == [("abc", "abc 11", 11), ("xyz", "xyz 5", 5)]


def test_a_legacy_trigger_on_another_table_is_seen_by_later_events_of_the_batch(
    tmp_path: Path,
) -> None:
    # The legacy schema touches an order whenever its customer is written
    touch = (
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);"
        "CREATE TRIGGER touch AFTER INSERT ON customers BEGIN UPDATE orders SET "
        "updated_at = '2026-11-28T23:00:00+00:00' WHERE id = NEW.id; END"
    )
    consumer = sqlite_consumer(tmp_path / "legacy.db", touch, CUSTOMERS)
    consumer.handle(order("OrderPlaced", 1, 9), "seed")
    customer = json.dumps(
        {
            "id": str(uuid.uuid4()),
            "detail-type": "CustomerSet",
            "source": "s",
            "detail": {"id": "c1", "customer": {"id": 1, "name": "Ada"}},
        }
    )
    # The customer's write makes the order newer than the event that follows it
    assert consumer.handle_batch([(customer, "m1"), (order("OrderPlaced", 1, 12), "m2")]) == [
        "applied",
        "skip_stale",
    ]

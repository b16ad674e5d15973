"""The validator's own tables: what it republished (one claim per event), and its dead letters.

``republished`` holds one row per (source, event id) the validator ever claimed. A row is
inserted, in its own committed transaction, *before* the event is sent to the central bus, and
the primary key lets only one claim win: that is what makes republishing at most once, across
restarts and between validators sharing a queue. Its ``status`` then tells the story:
``claimed`` (sent, or about to be: not known), ``published`` (the bus accepted it),
``rejected`` (the bus refused it; a dead letter says why). A claim left ``claimed`` by a crash
is *in doubt*: the event may or may not have reached the bus, so it is never sent again by
itself; the entry is kept for an operator, who may resend it (``cdc validate --resend``).

As with ``cdc.core.state``, the tables live in the service's schema on PostgreSQL and carry a
``cdc_`` prefix on SQLite. Migration 0005 creates them; this module describes them for queries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    and_,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from cdc.bus.events import BusEntry, entry_from_json, entry_to_json

CLAIMED, PUBLISHED, REJECTED = "claimed", "published", "rejected"
Key = tuple[str, str]  # (source, event id)


@dataclass(frozen=True)
class ValidationTables:
    metadata: MetaData
    republished: Table
    dead_letters: Table


def validation_tables(dialect: str, schema: str = "cdc") -> ValidationTables:
    sqlite_ = dialect == "sqlite"
    prefix = "cdc_" if sqlite_ else ""
    metadata = MetaData(schema=None if sqlite_ else schema)
    moment: Text | DateTime = Text() if sqlite_ else DateTime(timezone=True)
    republished = Table(
        f"{prefix}republished",
        metadata,
        Column("source", Text, primary_key=True),  # the original source, without "valid."
        Column("event_id", Text, primary_key=True),
        Column("detail_type", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("claim", Text, nullable=False),  # the claiming batch's token
        Column("message_id", Text),
        Column("entry", Text),  # the entry to send, kept until the bus accepted it
        Column("claimed_at", moment, nullable=False),
        Column("settled_at", moment),
    )
    dead_letters = Table(
        f"{prefix}validation_dead_letters",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("message_id", Text, nullable=False, unique=True),
        Column("event_id", Text),
        Column("source", Text),
        Column("detail_type", Text),
        Column("reason", Text, nullable=False),
        Column("errors", Text, nullable=False),  # JSON list: every validation error
        Column("body", Text, nullable=False),
        Column("created_at", moment, nullable=False),
        Column("attempts", Integer, nullable=False, default=1),
    )
    return ValidationTables(metadata, republished, dead_letters)


@dataclass(frozen=True, slots=True)
class Claim:
    key: Key
    detail_type: str
    message_id: str
    entry: BusEntry


@dataclass(frozen=True, slots=True)
class ValidationDeadLetter:
    message_id: str
    event_id: str | None
    source: str | None
    detail_type: str | None
    reason: str
    errors: tuple[str, ...]
    body: str


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    id: int
    letter: ValidationDeadLetter
    created_at: str
    attempts: int


@dataclass(frozen=True, slots=True)
class InDoubt:
    key: Key
    detail_type: str
    claimed_at: str
    entry: BusEntry | None


def _now(connection: Connection) -> Any:
    moment = datetime.now(UTC)
    return moment.isoformat() if connection.dialect.name == "sqlite" else moment


def _insert(connection: Connection) -> Any:
    return postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert


def claim(
    connection: Connection, tables: ValidationTables, token: str, claims: Sequence[Claim]
) -> dict[Key, tuple[str, str]]:
    """Try to claim each event for ``token``; the (status, claiming token) of every key
    afterwards. A key is this batch's to send when its token is ``token`` and its status
    ``claimed`` (also when this transaction is a retry of one that did commit)."""
    if not claims:
        return {}
    table = tables.republished
    now = _now(connection)
    statement = (
        _insert(connection)(table)
        .values(
            [
                {
                    "source": c.key[0],
                    "event_id": c.key[1],
                    "detail_type": c.detail_type,
                    "status": CLAIMED,
                    "claim": token,
                    "message_id": c.message_id,
                    "entry": entry_to_json(c.entry),
                    "claimed_at": now,
                }
                for c in claims
            ]
        )
        .on_conflict_do_nothing(index_elements=[table.c.source, table.c.event_id])
    )
    connection.execute(statement)
    keys = [c.key for c in claims]
    rows = connection.execute(
        select(table.c.source, table.c.event_id, table.c.status, table.c.claim).where(
            tuple_(table.c.source, table.c.event_id).in_(keys)
        )
    )
    return {(r.source, r.event_id): (r.status, r.claim) for r in rows}


def settle(
    connection: Connection,
    tables: ValidationTables,
    accepted: Iterable[Key],
    rejected: Iterable[Key],
    token: str | None = None,
) -> None:
    """Record the bus's verdict on claimed events (only those still claimed, and by ``token``
    when given): accepted ones are published and their kept entry dropped."""
    table = tables.republished
    now = _now(connection)
    for keys, status in ((list(accepted), PUBLISHED), (list(rejected), REJECTED)):
        if not keys:
            continue
        condition = and_(
            tuple_(table.c.source, table.c.event_id).in_(keys), table.c.status == CLAIMED
        )
        if token is not None:
            condition = and_(condition, table.c.claim == token)
        values: dict[str, Any] = {"status": status, "settled_at": now}
        if status == PUBLISHED:
            values["entry"] = None
        connection.execute(update(table).where(condition).values(**values))


def store_dead_letters(
    connection: Connection, tables: ValidationTables, letters: Sequence[ValidationDeadLetter]
) -> None:
    """Keep dead letters by SQS message id: the same message again (redelivered after a
    crash) updates its reason and errors and counts an attempt."""
    if not letters:
        return
    table = tables.dead_letters
    now = _now(connection)
    statement = _insert(connection)(table).values(
        [
            {
                "message_id": x.message_id,
                "event_id": x.event_id,
                "source": x.source,
                "detail_type": x.detail_type,
                "reason": x.reason,
                "errors": json.dumps(list(x.errors)),
                "body": x.body,
                "created_at": now,
            }
            for x in letters
        ]
    )
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.message_id],
        set_={
            "reason": statement.excluded.reason,
            "errors": statement.excluded.errors,
            "attempts": table.c.attempts + 1,
        },
    )
    connection.execute(statement)


def dead_letters(
    engine: Engine, tables: ValidationTables, limit: int = 100
) -> list[StoredDeadLetter]:
    table = tables.dead_letters
    with engine.connect() as connection:
        rows = connection.execute(select(table).order_by(table.c.id).limit(limit)).mappings()
        return [
            StoredDeadLetter(
                r["id"],
                ValidationDeadLetter(
                    r["message_id"],
                    r["event_id"],
                    r["source"],
                    r["detail_type"],
                    r["reason"],
                    tuple(json.loads(r["errors"])),
                    r["body"],
                ),
                str(r["created_at"]),
                r["attempts"],
            )
            for r in rows
        ]


def in_doubt(
    engine: Engine,
    tables: ValidationTables,
    older_than: timedelta = timedelta(0),
    event_ids: Sequence[str] = (),
    limit: int = 100,
) -> list[InDoubt]:
    """Claims never settled: the event may or may not be on the bus. Claims younger than
    ``older_than`` may still be in a running validator's hands and are left out."""
    table = tables.republished
    query = select(table).where(_unsettled(engine, tables, older_than))
    if event_ids:
        query = query.where(table.c.event_id.in_(event_ids))
    with engine.connect() as connection:
        rows = connection.execute(query.order_by(table.c.claimed_at).limit(limit)).mappings()
        return [
            InDoubt(
                (r["source"], r["event_id"]),
                r["detail_type"],
                str(r["claimed_at"]),
                entry_from_json(r["entry"]) if r["entry"] else None,
            )
            for r in rows
        ]


def count_in_doubt(
    engine: Engine, tables: ValidationTables, older_than: timedelta = timedelta(0)
) -> int:
    """How many claims ``in_doubt`` would list (all of them, not a page)."""
    table = tables.republished
    query = select(func.count()).select_from(table).where(_unsettled(engine, tables, older_than))
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def _unsettled(engine: Engine, tables: ValidationTables, older_than: timedelta) -> Any:
    table = tables.republished
    cutoff: Any = datetime.now(UTC) - older_than
    if engine.dialect.name == "sqlite":
        cutoff = cutoff.isoformat()
    return and_(table.c.status == CLAIMED, table.c.claimed_at <= cutoff)

"""The validator's own tables: what it republished (one claim per event), and its dead letters.

``republished`` holds one row per (source, event id) the validator ever claimed. A row is
inserted, in its own committed transaction, *before* the event is sent to the central bus, and
the primary key lets only one claim win: that is what makes republishing at most once, across
restarts and between validators sharing a queue. Its ``status`` then tells the story:
``claimed`` (sent, or about to be: not known), ``published`` (the bus accepted it),
``rejected`` (the bus refused it; a dead letter says why). A claim left ``claimed`` by a crash
is *in doubt*: the event may or may not have reached the bus, so it is never sent again by
itself; the entry is kept for an operator, who may resend it (``cdc validate --resend``).

The tables are described with the service's others (``cdc.core.state``); migration 0005
creates them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, select, tuple_, update

from cdc.bus.events import BusEntry, entry_from_json, entry_to_json
from cdc.core.deadletters import DeadLetterStore
from cdc.core.dialects import dialect_of
from cdc.core.state import StateTables

CLAIMED, PUBLISHED, REJECTED = "claimed", "published", "rejected"
Key = tuple[str, str]  # (source, event id)


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


def _dead_letters(tables: StateTables) -> DeadLetterStore:
    return DeadLetterStore(tables.validation_dead_letters, "message_id", ("reason", "errors"))


def claim(
    connection: Connection, tables: StateTables, token: str, claims: Sequence[Claim]
) -> dict[Key, tuple[str, str]]:
    """Try to claim each event for ``token``; the (status, claiming token) of every key
    afterwards. A key is this batch's to send when its token is ``token`` and its status
    ``claimed`` (also when this transaction is a retry of one that did commit)."""
    if not claims:
        return {}
    table = tables.republished
    dialect = dialect_of(connection)
    now = dialect.now()
    statement = (
        dialect.insert(table)
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
    tables: StateTables,
    accepted: Iterable[Key],
    rejected: Iterable[Key],
    token: str | None = None,
) -> None:
    """Record the bus's verdict on claimed events (only those still claimed, and by ``token``
    when given): accepted ones are published and their kept entry dropped."""
    table = tables.republished
    now = dialect_of(connection).now()
    for keys, status in ((list(accepted), PUBLISHED), (list(rejected), REJECTED)):
        if not keys:
            continue
        condition = and_(
            tuple_(table.c.source, table.c.event_id).in_(keys), table.c.status == CLAIMED
        )
        if token is not None:
            condition = and_(condition, table.c.claim == token)
        values: dict[str, object] = {"status": status, "settled_at": now}
        if status == PUBLISHED:
            values["entry"] = None
        connection.execute(update(table).where(condition).values(**values))


def store_dead_letters(
    connection: Connection, tables: StateTables, letters: Sequence[ValidationDeadLetter]
) -> None:
    """Keep dead letters by SQS message id: the same message again (redelivered after a
    crash) updates its reason and errors and counts an attempt."""
    _dead_letters(tables).store(
        connection,
        [
            {
                "message_id": x.message_id,
                "event_id": x.event_id,
                "source": x.source,
                "detail_type": x.detail_type,
                "reason": x.reason,
                "errors": json.dumps(list(x.errors)),
                "body": x.body,
            }
            for x in letters
        ],
    )


def dead_letters(engine: Engine, tables: StateTables, limit: int = 100) -> list[StoredDeadLetter]:
    with engine.connect() as connection:
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
            for r in _dead_letters(tables).listing(connection, limit)
        ]


def in_doubt(
    engine: Engine,
    tables: StateTables,
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
    engine: Engine, tables: StateTables, older_than: timedelta = timedelta(0)
) -> int:
    """How many claims ``in_doubt`` would list (all of them, not a page)."""
    table = tables.republished
    query = select(func.count()).select_from(table).where(_unsettled(engine, tables, older_than))
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def _unsettled(engine: Engine, tables: StateTables, older_than: timedelta) -> Any:
    table = tables.republished
    cutoff = dialect_of(engine).stored_moment(datetime.now(UTC) - older_than)
    return and_(table.c.status == CLAIMED, table.c.claimed_at <= cutoff)

"""Dead letters: events the bus can never accept, kept with their reason for an operator.

Stored in the same transaction that acknowledges their batch. A re-read batch (after a crash)
may reject the same event again: the unique event id makes that a no-op, counted as a retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from cdc.bus.events import BusEntry, entry_from_json, entry_to_json
from cdc.bus.publishers import Rejection
from cdc.core.state import StateTables


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    event_id: str
    table: str
    reason: str
    created_at: str
    attempts: int
    entry: BusEntry


def store(connection: Connection, tables: StateTables, rejections: Sequence[Rejection]) -> None:
    if not rejections:
        return
    now = datetime.now(UTC)
    rows = [
        {
            "event_id": r.entry.event_id,
            "table_name": r.entry.table,
            "reason": r.reason,
            "entry": entry_to_json(r.entry),
            "created_at": _moment(connection, now),
        }
        for r in rejections
    ]
    table = tables.dead_letters
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    statement = insert(table).values(rows)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.event_id],
        set_={"reason": statement.excluded.reason, "attempts": table.c.attempts + 1},
    )
    connection.execute(statement)


def _moment(connection: Connection, moment: datetime) -> Any:
    return moment.isoformat() if connection.dialect.name == "sqlite" else moment


def listing(engine: Engine, tables: StateTables, limit: int = 100) -> list[DeadLetter]:
    table = tables.dead_letters
    with engine.connect() as connection:
        rows = connection.execute(select(table).order_by(table.c.id).limit(limit)).mappings()
        return [
            DeadLetter(
                row["id"],
                row["event_id"],
                row["table_name"],
                row["reason"],
                str(row["created_at"]),
                row["attempts"],
                entry_from_json(row["entry"]),
            )
            for row in rows
        ]


def count(engine: Engine, tables: StateTables) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(select(func.count()).select_from(tables.dead_letters)).scalar_one()
        )


def resolve(
    engine: Engine, tables: StateTables, accepted: Sequence[str], rejected: Sequence[Rejection]
) -> None:
    """After a resend: accepted events leave the table, rejected ones get the new reason."""
    table = tables.dead_letters
    with engine.begin() as connection:
        if accepted:
            connection.execute(delete(table).where(table.c.event_id.in_(accepted)))
        for rejection in rejected:
            connection.execute(
                update(table)
                .where(table.c.event_id == rejection.entry.event_id)
                .values(reason=rejection.reason, attempts=table.c.attempts + 1)
            )

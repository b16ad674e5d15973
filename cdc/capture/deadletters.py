"""Capture's dead letters: events the bus can never accept, kept with their reason for an
operator (``cdc dead-letters``).

Stored in the same transaction that acknowledges their batch. A re-read batch (after a crash)
may reject the same event again: the unique event id makes that a no-op, counted as a retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine

from cdc.bus.events import BusEntry, entry_from_json, entry_to_json
from cdc.bus.publishers import Rejection
from cdc.core.deadletters import DeadLetterStore
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


def _store(tables: StateTables) -> DeadLetterStore:
    return DeadLetterStore(tables.dead_letters, "event_id")


def store(connection: Connection, tables: StateTables, rejections: Sequence[Rejection]) -> None:
    _store(tables).store(
        connection,
        [
            {
                "event_id": r.entry.event_id,
                "table_name": r.entry.table,
                "reason": r.reason,
                "entry": entry_to_json(r.entry),
            }
            for r in rejections
        ],
    )


def listing(engine: Engine, tables: StateTables, limit: int = 100) -> list[DeadLetter]:
    with engine.connect() as connection:
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
            for row in _store(tables).listing(connection, limit)
        ]


def count(engine: Engine, tables: StateTables) -> int:
    with engine.connect() as connection:
        return _store(tables).count(connection)


def resolve(
    engine: Engine, tables: StateTables, accepted: Sequence[str], rejected: Sequence[Rejection]
) -> None:
    """After a resend: accepted events leave the table, rejected ones get the new reason."""
    letters = _store(tables)
    with engine.begin() as connection:
        letters.remove(connection, accepted)
        for rejection in rejected:
            letters.failed_again(connection, rejection.entry.event_id, rejection.reason)

"""Dead letters: what could not go through, kept with its reason for an operator.

Three stores share this code, each with its own table and its own list command: capture's
(events the bus can never accept), sync back's (messages it cannot apply) and the
validator's (events that fail their schema). A letter is kept by a unique key, an event id or
an SQS message id: the same key again (a batch read again after a crash, a message
redelivered) updates what may have changed and counts an attempt, never a second row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, RowMapping, Table, delete, func, select, update

from cdc.core.dialects import dialect_of


@dataclass(frozen=True)
class DeadLetterStore:
    """One dead-letter table: an autoincrementing ``id``, the unique ``key`` column,
    ``created_at`` and ``attempts``, and the letter's own columns."""

    table: Table
    key: str  # the unique column that says two letters are one
    refreshed: tuple[str, ...] = ("reason",)  # what a letter stored again overwrites

    def store(self, connection: Connection, letters: Sequence[Mapping[str, Any]]) -> None:
        """Keep ``letters`` (their own columns), inside the caller's transaction."""
        if not letters:
            return
        dialect = dialect_of(connection)
        now = dialect.now()
        table = self.table
        statement = dialect.insert(table).values(
            [{**letter, "created_at": now} for letter in letters]
        )
        statement = statement.on_conflict_do_update(
            index_elements=[table.c[self.key]],
            set_={
                **{column: statement.excluded[column] for column in self.refreshed},
                "attempts": table.c.attempts + 1,
            },
        )
        connection.execute(statement)

    def listing(self, connection: Connection, limit: int = 100) -> list[RowMapping]:
        """The oldest ``limit`` letters, in the order they were first stored."""
        table = self.table
        rows = connection.execute(select(table).order_by(table.c.id).limit(limit)).mappings()
        return list(rows)

    def count(self, connection: Connection) -> int:
        return int(connection.execute(select(func.count()).select_from(self.table)).scalar_one())

    def remove(self, connection: Connection, keys: Sequence[Any]) -> None:
        """Letters that went through after all leave the table."""
        if keys:
            connection.execute(delete(self.table).where(self.table.c[self.key].in_(keys)))

    def failed_again(self, connection: Connection, key: Any, reason: str) -> None:
        """A letter sent again and refused again: its new reason, one more attempt."""
        table = self.table
        connection.execute(
            update(table)
            .where(table.c[self.key] == key)
            .values(reason=reason, attempts=table.c.attempts + 1)
        )

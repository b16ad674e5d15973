"""Checkpoints: per capture stream, the highest position acknowledged and how many changes.

For ``cdc status`` and for operators; the source of truth for where to resume is the source's
own (the change log's remaining rows, the slot's confirmed flush LSN). The stored position
never moves back, even when a late commit acknowledges a lower change-log id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func
from sqlalchemy.dialects import postgresql, sqlite

from cdc.state import StateTables


def store(connection: Connection, tables: StateTables, stream: str, position: str, count: int) -> None:
    table = tables.checkpoints
    now: Any = datetime.now(UTC)
    is_sqlite = connection.dialect.name == "sqlite"
    if is_sqlite:
        now = now.isoformat()
    insert = sqlite.insert if is_sqlite else postgresql.insert
    statement = insert(table).values(stream=stream, position=position, published=count, updated_at=now)
    greatest = func.max if is_sqlite else func.greatest
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.stream],
        set_={
            "position": greatest(table.c.position, statement.excluded.position),
            "published": table.c.published + statement.excluded.published,
            "updated_at": statement.excluded.updated_at,
        },
    )
    connection.execute(statement)

"""Checkpoints: per capture stream, the highest position acknowledged and how many changes.

For ``cdc status`` and for operators; the source of truth for where to resume is the source's
own (the change log's remaining rows, the slot's confirmed flush LSN). The stored position
never moves back, even when a late commit acknowledges a lower change-log id. Written once per
batch, so the statement is plain SQL built once, not an ORM upsert built every time.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Connection

from cdc.core.state import StateTables


@cache
def _upsert(dialect: str, table: str) -> str:
    if dialect == "sqlite":
        return (
            f"INSERT INTO {table} (stream, position, published, updated_at) "
            "VALUES (?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) "
            "ON CONFLICT (stream) DO UPDATE SET position = max(position, excluded.position), "
            "published = published + excluded.published, updated_at = excluded.updated_at"
        )
    return (
        f"INSERT INTO {table} AS c (stream, position, published, updated_at) "
        "VALUES (%s, %s, %s, now()) "
        "ON CONFLICT (stream) DO UPDATE SET position = greatest(c.position, excluded.position), "
        "published = c.published + excluded.published, updated_at = excluded.updated_at"
    )


def store(
    connection: Connection, tables: StateTables, stream: str, position: str, count: int
) -> None:
    """Record an acknowledged batch, inside the caller's transaction."""
    sql = _upsert(connection.dialect.name, tables.qualified(tables.checkpoints))
    raw: Any = connection.connection.driver_connection
    raw.cursor().execute(sql, (stream, position, count))

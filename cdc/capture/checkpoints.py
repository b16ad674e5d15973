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

from cdc.capture.dialects import capture_of
from cdc.core.dialects import Dialect, dialect_of
from cdc.core.state import StateTables


@cache
def _upsert(dialect: Dialect, table: str) -> str:
    return capture_of(dialect).checkpoint_upsert(table)


def store(
    connection: Connection, tables: StateTables, stream: str, position: str, count: int
) -> None:
    """Record an acknowledged batch, inside the caller's transaction."""
    sql = _upsert(dialect_of(connection), tables.qualified(tables.checkpoints))
    raw: Any = connection.connection.driver_connection
    raw.cursor().execute(sql, (stream, position, count))

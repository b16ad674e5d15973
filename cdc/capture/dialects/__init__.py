"""Capture's per-database code, one object per database (``CaptureDialect``), found from the
database's ``cdc.core.dialects`` object. Every branch of capture on the database is here:
value conversion, capture triggers, the change log's statements, backfill snapshots."""

from __future__ import annotations

from cdc.capture.dialects.base import CaptureDialect, PageSql
from cdc.capture.dialects.postgresql import PostgresCapture
from cdc.capture.dialects.sqlite import SqliteCapture
from cdc.core.dialects import POSTGRESQL, SQLITE, Dialect

_CAPTURES: dict[Dialect, CaptureDialect] = {
    POSTGRESQL: PostgresCapture(),
    SQLITE: SqliteCapture(),
}

__all__ = ["CaptureDialect", "PageSql", "capture_of"]


def capture_of(dialect: Dialect) -> CaptureDialect:
    """How capture works on ``dialect``'s database."""
    return _CAPTURES[dialect]

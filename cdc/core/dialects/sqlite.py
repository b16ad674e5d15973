"""SQLite: one file and one writer at a time. The state tables sit in the legacy file itself
with a ``cdc_`` prefix (its triggers may only write to tables of their own database), moments
are ISO 8601 text (it has no timestamp type), and the origin is a row (no session settings)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Integer, Table, Text, create_engine, event, text
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL

from cdc.core.dialects.base import Dialect, StateLayout, utc

PREFIX = "cdc_"
# The form the change-log trigger's default writes (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
# to the microsecond: text in one form sorts in time order.
_MOMENT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class SQLite(Dialect):
    name = "sqlite"
    url_names = ("sqlite",)
    url_scheme = "sqlite:///"
    url_example = "sqlite:///path/to/file.db"
    default_schema = "main"
    strict_types = False
    logical_replication = False
    advisory_locks = False
    operational_statement_errors = True

    def normalized_url(self, url: URL) -> URL:
        return url

    def create_engine(self, url: URL) -> Engine:
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _pragmas)
        return engine

    def database_name(self, url: URL) -> str:
        return Path(url.database or "legacy").stem

    def location(self, url: URL) -> str:
        return url.database or "?"

    def state_layout(self, schema: str) -> StateLayout:
        # Ids autoincrement only as INTEGER PRIMARY KEY.
        return StateLayout(None, PREFIX, Integer, Text(), origin_table=True)

    def create_state_schema(self, connection: Connection, schema: str) -> None:
        pass  # no schemas: the tables go into the legacy file

    def drop_state_schema(self, connection: Connection, schema: str) -> None:
        connection.execute(text(f"DROP TABLE IF EXISTS {PREFIX}alembic_version"))

    def insert(self, table: Table) -> sqlite.Insert:
        return sqlite.insert(table)

    def stored_moment(self, moment: datetime) -> str:
        return moment.astimezone(UTC).strftime(_MOMENT_FORMAT)

    def read_moment(self, stored: datetime | str) -> datetime:
        return utc(stored if isinstance(stored, datetime) else datetime.fromisoformat(stored))

    def reflection_schema(self, schema: str) -> str | None:
        return None if schema == self.default_schema else schema

    def type_from_text(self, text: str) -> sqltypes.TypeEngine[Any]:
        """SQLite's type affinity rules, as far as conversion tells types apart: NUMERIC and
        DECIMAL columns are exact numbers, everything else keeps its value."""
        upper = text.upper()
        if "INT" in upper:
            return sqltypes.Integer()
        if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
            return sqltypes.Text()
        if "BLOB" in upper or not upper:
            return sqltypes.LargeBinary()
        if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
            return sqltypes.Float()
        return sqltypes.Numeric()

    @contextmanager
    def origin_tag(
        self, connection: Connection, origin: str, logical: bool = False, to_commit: bool = False
    ) -> Iterator[None]:
        # One writer at a time, so a row in cdc_origin, present only inside this transaction,
        # tags exactly this transaction's writes (the triggers read it).
        connection.execute(text(f"DELETE FROM {PREFIX}origin"))
        connection.execute(text(f"INSERT INTO {PREFIX}origin (origin) VALUES (:o)"), {"o": origin})
        yield
        connection.execute(text(f"DELETE FROM {PREFIX}origin"))


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the legacy application keep writing while the worker reads.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()

"""The service's own tables: the change log, checkpoints, dead letters.

On PostgreSQL they live in their own schema (``cdc`` by default). SQLite has no schemas and
its triggers may only write to tables of their own database, so there the same tables sit in
the legacy file with a ``cdc_`` prefix. Alembic creates them (``migrations/``); this module
only describes them for queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    Table,
    Text,
)


@dataclass(frozen=True)
class StateTables:
    metadata: MetaData
    schema: str | None
    prefix: str
    changelog: Table
    checkpoints: Table
    dead_letters: Table
    origin: Table | None  # SQLite only: the writer's origin for the current transaction
    inbox: Table
    sync_dead_letters: Table
    conflicts: Table
    synced_rows: Table
    backfills: Table
    table_schemas: Table

    def qualified(self, table: Table) -> str:
        """The SQL name, for DDL written by hand (triggers)."""
        return f'"{self.schema}"."{table.name}"' if self.schema else f'"{table.name}"'


def shown_moment(moment: datetime | str | None) -> str:
    """A moment read from a state table, as the commands print it: ISO 8601 in UTC to the
    second, the same from SQLite (ISO text) and PostgreSQL (timestamptz)."""
    if moment is None:
        return "-"
    if isinstance(moment, str):
        try:
            return shown_moment(datetime.fromisoformat(moment))
        except ValueError:
            return moment
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the service writes UTC only
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def state_tables(dialect: str, schema: str = "cdc") -> StateTables:
    sqlite = dialect == "sqlite"
    prefix = "cdc_" if sqlite else ""
    table_schema = None if sqlite else schema
    metadata = MetaData(schema=table_schema)
    id_type = Integer if sqlite else BigInteger  # SQLite autoincrements INTEGER PRIMARY KEY only
    # SQLite keeps moments as ISO 8601 text, as its triggers write them.
    moment: Text | DateTime = Text() if sqlite else DateTime(timezone=True)
    changelog = Table(
        f"{prefix}changelog",
        metadata,
        Column("id", id_type, primary_key=True, autoincrement=True),
        Column("table_name", Text, nullable=False),
        Column("op", Text, nullable=False),
        Column("before", Text),
        Column("after", Text),
        Column("txid", BigInteger),
        Column("origin", Text),
        Column("captured_at", moment, nullable=False),
    )
    checkpoints = Table(
        f"{prefix}checkpoints",
        metadata,
        Column("stream", Text, primary_key=True),
        Column("position", Text, nullable=False),
        Column("published", BigInteger, nullable=False, default=0),
        Column("updated_at", moment, nullable=False),
    )
    dead_letters = Table(
        f"{prefix}dead_letters",
        metadata,
        Column("id", id_type, primary_key=True, autoincrement=True),
        Column("event_id", Text, nullable=False, unique=True),
        Column("table_name", Text, nullable=False),
        Column("reason", Text, nullable=False),
        Column("entry", Text, nullable=False),
        Column("created_at", moment, nullable=False),
        Column("attempts", Integer, nullable=False, default=1),
    )
    origin = (
        Table(f"{prefix}origin", metadata, Column("origin", Text, nullable=False))
        if sqlite
        else None
    )
    return StateTables(
        metadata,
        table_schema,
        prefix,
        changelog,
        checkpoints,
        dead_letters,
        origin,
        *_sync_back_tables(metadata, prefix, id_type, moment),
        *_backfill_and_schema_tables(metadata, prefix, id_type, moment),
    )


def _sync_back_tables(
    metadata: MetaData, prefix: str, id_type: type[Integer], moment: Text | DateTime
) -> tuple[Table, Table, Table, Table]:
    """The inbox, the sync-back dead letters, the conflicts and the synced rows."""
    inbox = Table(
        f"{prefix}inbox",
        metadata,
        Column("event_id", Text, primary_key=True),
        Column("detail_type", Text, nullable=False),
        Column("table_name", Text, nullable=False),
        Column("outcome", Text, nullable=False),
        Column("applied_at", moment, nullable=False),
    )
    sync_dead_letters = Table(
        f"{prefix}sync_dead_letters",
        metadata,
        Column("id", id_type, primary_key=True, autoincrement=True),
        Column("message_id", Text, nullable=False, unique=True),
        Column("detail_type", Text),
        Column("reason", Text, nullable=False),
        Column("body", Text, nullable=False),
        Column("created_at", moment, nullable=False),
        Column("attempts", Integer, nullable=False, default=1),
    )
    conflicts = Table(
        f"{prefix}conflicts",
        metadata,
        Column("id", id_type, primary_key=True, autoincrement=True),
        Column("event_id", Text, nullable=False, unique=True),
        Column("table_name", Text, nullable=False),
        Column("row_key", Text, nullable=False),
        Column("reason", Text, nullable=False),
        Column("body", Text, nullable=False),
        Column("created_at", moment, nullable=False),
    )
    synced_rows = Table(
        f"{prefix}synced_rows",
        metadata,
        Column("table_name", Text, primary_key=True),
        Column("row_key", Text, primary_key=True),
        Column("version", Text),
        Column("event_id", Text, nullable=False),
    )
    return inbox, sync_dead_letters, conflicts, synced_rows


def _backfill_and_schema_tables(
    metadata: MetaData, prefix: str, id_type: type[Integer], moment: Text | DateTime
) -> tuple[Table, Table]:
    """The backfill runs and the captured tables' schema versions."""
    backfills = Table(
        f"{prefix}backfills",
        metadata,
        Column("id", id_type, primary_key=True, autoincrement=True),
        Column("table_name", Text, nullable=False),
        Column("where_clause", Text),
        Column("chunk_size", Integer, nullable=False),
        Column("rate", Float),
        Column("status", Text, nullable=False),
        Column("last_key", Text),
        Column("rows_total", BigInteger),
        Column("rows_done", BigInteger, nullable=False, default=0),
        Column("chunks_done", BigInteger, nullable=False, default=0),
        Column("started_at", moment, nullable=False),
        Column("updated_at", moment, nullable=False),
        Column("finished_at", moment),
    )
    table_schemas = Table(
        f"{prefix}table_schemas",
        metadata,
        Column("table_name", Text, primary_key=True),
        Column("version", Integer, primary_key=True),
        Column("position", Text, nullable=False),
        Column("shape", Text, nullable=False),
        Column("recorded_at", moment, nullable=False),
    )
    return backfills, table_schemas

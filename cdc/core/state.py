"""The service's own tables: capture's (change log, checkpoints, dead letters, backfills,
schema history), sync back's (inbox, dead letters, conflicts, synced rows) and the
validator's (republished events, dead letters).

Their place, names and column types are the dialect's (``Dialect.state_layout``): on
PostgreSQL they live in their own schema (``cdc`` by default); SQLite has no schemas and its
triggers may only write to tables of their own database, so there the same tables sit in the
legacy file with a ``cdc_`` prefix. Alembic creates them (``migrations/``); this module only
describes them for queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, Float, Integer, MetaData, Table, Text

from cdc.core.dialects import Dialect, StateLayout


@dataclass(frozen=True)
class StateTables:
    metadata: MetaData
    schema: str | None
    prefix: str
    changelog: Table
    checkpoints: Table
    dead_letters: Table
    backfills: Table
    table_schemas: Table
    origin: Table | None  # where the writer's origin is a row (``Dialect.origin_tag``)
    inbox: Table
    sync_dead_letters: Table
    conflicts: Table
    synced_rows: Table
    republished: Table
    validation_dead_letters: Table

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


def state_tables(dialect: Dialect, schema: str = "cdc") -> StateTables:
    layout = dialect.state_layout(schema)
    metadata = MetaData(schema=layout.schema)
    return StateTables(
        metadata,
        layout.schema,
        layout.prefix,
        *_capture_tables(layout, metadata),
        *_sync_back_tables(layout, metadata),
        *_validation_tables(layout, metadata),
    )


def _capture_tables(
    layout: StateLayout, metadata: MetaData
) -> tuple[Table, Table, Table, Table, Table]:
    """The change log, checkpoints, dead letters, backfills, schema history."""
    name, moment, id_type = layout.name, layout.moment, layout.id_type
    changelog = Table(
        name("changelog"),
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
        name("checkpoints"),
        metadata,
        Column("stream", Text, primary_key=True),
        Column("position", Text, nullable=False),
        Column("published", BigInteger, nullable=False, default=0),
        Column("updated_at", moment, nullable=False),
    )
    dead_letters = Table(
        name("dead_letters"),
        metadata,
        Column("id", id_type, primary_key=True, autoincrement=True),
        Column("event_id", Text, nullable=False, unique=True),
        Column("table_name", Text, nullable=False),
        Column("reason", Text, nullable=False),
        Column("entry", Text, nullable=False),
        Column("created_at", moment, nullable=False),
        Column("attempts", Integer, nullable=False, default=1),
    )
    backfills = Table(
        name("backfills"),
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
        name("table_schemas"),
        metadata,
        Column("table_name", Text, primary_key=True),
        Column("version", Integer, primary_key=True),
        Column("position", Text, nullable=False),
        Column("shape", Text, nullable=False),
        Column("recorded_at", moment, nullable=False),
    )
    return changelog, checkpoints, dead_letters, backfills, table_schemas


def _sync_back_tables(
    layout: StateLayout, metadata: MetaData
) -> tuple[Table | None, Table, Table, Table, Table]:
    """The origin (where it is a row), the inbox, dead letters, conflicts, synced rows."""
    name, moment, id_type = layout.name, layout.moment, layout.id_type
    origin = (
        Table(name("origin"), metadata, Column("origin", Text, nullable=False))
        if layout.origin_table
        else None
    )
    inbox = Table(
        name("inbox"),
        metadata,
        Column("event_id", Text, primary_key=True),
        Column("detail_type", Text, nullable=False),
        Column("table_name", Text, nullable=False),
        Column("outcome", Text, nullable=False),
        Column("applied_at", moment, nullable=False),
    )
    dead_letters = Table(
        name("sync_dead_letters"),
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
        name("conflicts"),
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
        name("synced_rows"),
        metadata,
        Column("table_name", Text, primary_key=True),
        Column("row_key", Text, primary_key=True),
        Column("version", Text),
        Column("event_id", Text, nullable=False),
    )
    return origin, inbox, dead_letters, conflicts, synced_rows


def _validation_tables(layout: StateLayout, metadata: MetaData) -> tuple[Table, Table]:
    """What the validator republished (one claim per event), and its dead letters."""
    name, moment = layout.name, layout.moment
    republished = Table(
        name("republished"),
        metadata,
        Column("source", Text, primary_key=True),  # the original source, without "valid."
        Column("event_id", Text, primary_key=True),
        Column("detail_type", Text, nullable=False),
        Column("status", Text, nullable=False),
        Column("claim", Text, nullable=False),  # the claiming batch's token
        Column("message_id", Text),
        Column("entry", Text),  # the entry to send, kept until the bus accepted it
        Column("claimed_at", moment, nullable=False),
        Column("settled_at", moment),
    )
    dead_letters = Table(
        name("validation_dead_letters"),
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),  # migration 0005's type
        Column("message_id", Text, nullable=False, unique=True),
        Column("event_id", Text),
        Column("source", Text),
        Column("detail_type", Text),
        Column("reason", Text, nullable=False),
        Column("errors", Text, nullable=False),  # JSON list: every validation error
        Column("body", Text, nullable=False),
        Column("created_at", moment, nullable=False),
        Column("attempts", Integer, nullable=False, default=1),
    )
    return republished, dead_letters

"""What the service needs to know of a database, in one object per database (``Dialect``).

Everything that differs between PostgreSQL and SQLite and is not capture's own business lives
behind this class: engines, URLs, the service's own tables (their place, names and column
types), inserts that resolve conflicts, moments as stored, reflection, the origin tag that
sync back puts on its transactions. Code elsewhere asks the object (``dialect_of``), never the
dialect's name. Capture's per-database code (triggers, row images, snapshots) is in
``cdc.capture.dialects``, keyed on these objects.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Integer, Table
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL

# An INSERT that can resolve a conflict: ``.on_conflict_do_nothing(index_elements=...)`` and
# ``.on_conflict_do_update(index_elements=..., set_=...)``, with ``.excluded``; the two
# dialects spell these the same.
Upsert = postgresql.Insert | sqlite.Insert


@dataclass(frozen=True)
class StateLayout:
    """Where and how a database holds the service's own tables (``cdc.core.state``)."""

    schema: str | None  # their schema; None: the database's only one
    prefix: str  # before every table name
    id_type: type[Integer]  # the type of autoincrementing ids
    moment: sqltypes.TypeEngine[Any]  # the type of moments (``Dialect.now``)
    origin_table: bool  # whether the writer's origin is a row (``Dialect.origin_tag``)

    def name(self, table: str) -> str:
        return f"{self.prefix}{table}"


class Dialect(ABC):
    """One database's answers; one instance per database (``cdc.core.dialects``)."""

    name: str  # SQLAlchemy's name of the dialect
    url_names: tuple[str, ...]  # backend names its URLs may carry
    url_scheme: str  # how its URLs begin, for messages
    url_example: str  # a URL's form, for messages
    default_schema: str  # the schema of a legacy table named without one
    # Whether a column holds only values of its declared type (SQLite's type affinity keeps
    # whatever a row was given): decides what a generated JSON Schema may promise.
    strict_types: bool
    logical_replication: bool  # whether the ``logical`` capture mode is possible
    advisory_locks: bool  # whether capture workers can hold a lease (one leader)
    # Whether the driver raises its "operational" error (otherwise a lost connection) for a
    # statement's own fault too (sqlite3 does, for a syntax error): then it says nothing.
    operational_statement_errors: bool

    def __repr__(self) -> str:
        return f"<dialect {self.name}>"

    # -- connections ----------------------------------------------------------------------

    @abstractmethod
    def normalized_url(self, url: URL) -> URL:
        """The URL with the driver the service uses."""

    @abstractmethod
    def create_engine(self, url: URL) -> Engine:
        """The engine of a process."""

    @abstractmethod
    def database_name(self, url: URL) -> str:
        """The database's name for the default event source (``legacy.<name>``)."""

    @abstractmethod
    def location(self, url: URL) -> str:
        """Where the database is, as an operator's message names it."""

    # -- the service's own tables ---------------------------------------------------------

    @abstractmethod
    def state_layout(self, schema: str) -> StateLayout:
        """Where the state tables are, for the state schema the settings name."""

    def version_table(self, schema: str) -> tuple[str, str | None]:
        """Alembic's version table of the state tables: its name and schema."""
        layout = self.state_layout(schema)
        return layout.name("alembic_version"), layout.schema

    @abstractmethod
    def create_state_schema(self, connection: Connection, schema: str) -> None:
        """Make room for the state tables before the first migration."""

    @abstractmethod
    def drop_state_schema(self, connection: Connection, schema: str) -> None:
        """Remove what is left once every migration was undone (the version table)."""

    # -- statements -----------------------------------------------------------------------

    @abstractmethod
    def insert(self, table: Table) -> Upsert:
        """An INSERT into ``table`` that may resolve conflicts (``Upsert``)."""

    @abstractmethod
    def stored_moment(self, moment: datetime) -> datetime | str:
        """A moment (aware, UTC) as the state tables hold it."""

    def now(self) -> datetime | str:
        """This moment, as the state tables hold it."""
        return self.stored_moment(datetime.now(UTC))

    @abstractmethod
    def read_moment(self, stored: datetime | str) -> datetime:
        """A moment read back from a state table, aware."""

    @abstractmethod
    def reflection_schema(self, schema: str) -> str | None:
        """The schema to give SQLAlchemy's reflection for a legacy table's schema."""

    @abstractmethod
    def type_from_text(self, text: str) -> sqltypes.TypeEngine[Any]:
        """The SQLAlchemy type of a column type as the schema history records it."""

    # -- sync back's tag ------------------------------------------------------------------

    @abstractmethod
    def origin_tag(
        self, connection: Connection, origin: str, logical: bool = False, to_commit: bool = False
    ) -> AbstractContextManager[None]:
        """Tag the writes made inside the block with ``origin``, in the connection's current
        transaction, so capture recognises (and by default drops) them: the loop-prevention
        hook of both capture modes. ``logical``: also for the logical mode's stream;
        ``to_commit``: the block ends with the transaction (a reset may be saved)."""


def utc(moment: datetime) -> datetime:
    """An aware moment; a naive one is taken as UTC (the service writes UTC only)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

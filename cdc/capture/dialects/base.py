"""What capture does differently per database, behind one protocol (``CaptureDialect``): how
row images carry values, the capture triggers, the change log's statements, and what a
backfill read needs (its page, its snapshot, its watermark)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection
from sqlalchemy import types as sqltypes

from cdc.bus.events import Change
from cdc.capture.values import Convert
from cdc.core.tables import TableRef

if TYPE_CHECKING:
    from cdc.capture.dialects.postgresql import Snapshot

Shape = dict[str, Any]  # {"columns": [{"name", "type", "nullable"}], "key": [...]}


@dataclass(frozen=True)
class PageSql:
    """The parts of a backfill page's SELECT that differ by database
    (``cdc.capture.backfill.pages``)."""

    image: str  # the row as JSON text, as the capture triggers write it
    source: str  # the table, under the page's alias
    keys: str  # the key columns, in the form a page's last key is stored
    placeholders: str  # a stored last key, bound back in the same order
    limit: str


class CaptureDialect(Protocol):
    # -- values (``cdc.capture.values.ValueRules``) ----------------------------------------

    def converter(
        self, column_type: sqltypes.TypeEngine[Any], numerics_as_doubles: bool
    ) -> Convert: ...

    def unknown_value(self, value: Any) -> Any: ...

    def parses_into_doubles(self, column_types: dict[str, sqltypes.TypeEngine[Any]]) -> bool:
        """Whether images of a table with these columns may be parsed into doubles."""
        ...

    # -- capture triggers (``cdc setup``) -------------------------------------------------

    def install_triggers(
        self, connection: Connection, ref: TableRef, columns: Iterable[str], state_schema: str
    ) -> None:
        """The table's capture triggers, replacing those it has."""

    def drop_triggers(self, connection: Connection, ref: TableRef, state_schema: str) -> None:
        """Remove the table's capture triggers, if it has any."""

    def triggered_tables(self, connection: Connection, state_schema: str) -> list[str]:
        """The tables (schema.table) that carry capture triggers."""
        ...

    def follow_schema_changes(
        self, connection: Connection, refs: Sequence[TableRef], state_schema: str
    ) -> dict[TableRef, Shape]:
        """Have the database record the tables' schema changes at their position in the
        change log; their shapes now (where their history starts), or none when it cannot."""
        ...

    # -- the change log and its checkpoints ----------------------------------------------

    # Whether the change-log source sends statements ahead on a connection of its own
    # (``cdc.capture.sources.readahead``, psycopg's pipelining).
    reads_ahead: bool

    def changelog_select(self, log_table: str) -> str:
        """The oldest change-log rows, a limit bound."""
        ...

    def delete_changes(self, cursor: Any, log_table: str, ids: Sequence[int]) -> None:
        """Delete acknowledged change-log rows by id, in the cursor's transaction."""

    def checkpoint_upsert(self, table: str) -> str:
        """Record a batch's checkpoint (stream, position, count bound): the position never
        moves back."""
        ...

    # -- backfill ---------------------------------------------------------------------------

    def page_sql(
        self,
        connection: Connection,
        ref: TableRef,
        columns: Iterable[str],
        key: Sequence[str],
        alias: str,
    ) -> PageSql:
        """How a backfill page reads the table, its rows named ``alias``."""
        ...

    def take_snapshot(
        self, raw: Any, logical: bool, changelog: str
    ) -> tuple[Callable[[Change], bool], Snapshot | None]:
        """Before a read on the driver connection ``raw``: a test for the changes that read
        will not see, and the snapshot behind it, if the database has one (``changelog``, the
        change-log table's name, may stand in for it)."""
        ...

    def write_watermark(
        self, cursor: Any, log_table: str, table: str, op: str, payload: str
    ) -> tuple[int, int]:
        """Write a backfill watermark into the change log: its id, and the transaction id that
        every writer that may still commit a lower id is below (``writers_done``)."""
        ...

    def writers_done(self, connection: Connection, below: int) -> bool:
        """Whether every transaction below ``below`` has ended."""
        ...

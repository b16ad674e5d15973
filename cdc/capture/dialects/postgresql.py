"""Capture on PostgreSQL: one generic row trigger per table calling the state schema's
``capture()`` (``row_to_json`` images, so a column added or dropped later needs no new setup),
an event trigger that records schema changes, transaction snapshots for backfill reads, and
transaction ids that say when every writer below a watermark is done."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, exc, text
from sqlalchemy import types as sqltypes

from cdc.bus.events import Change
from cdc.bus.jsontext import plain_json
from cdc.capture import values
from cdc.capture.dialects.base import PageSql, Shape
from cdc.core.errors import SetupError
from cdc.core.tables import TableRef, quote_ident

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """A PostgreSQL snapshot (``pg_current_snapshot()``), for 64-bit transaction ids."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, value: str) -> Snapshot:
        xmin, xmax, xip = value.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def sees(self, xid: int) -> bool:
        return xid < self.xmin or (xid < self.xmax and xid not in self.xip)

    def sees_xid32(self, xid: int) -> bool:
        """For the 32-bit xids of the replication protocol: placed in the epoch nearest xmax."""
        full = (self.xmax & ~0xFFFFFFFF) | xid
        if full - self.xmax >= 1 << 31:
            full -= 1 << 32
        return self.sees(full)


class PostgresCapture:
    reads_ahead = True

    # -- values -----------------------------------------------------------------------------

    def converter(
        self, column_type: sqltypes.TypeEngine[Any], numerics_as_doubles: bool
    ) -> values.Convert:
        return values.converter(column_type, numerics_as_doubles)

    def unknown_value(self, value: Any) -> Any:
        return plain_json(value)

    def parses_into_doubles(self, column_types: dict[str, sqltypes.TypeEngine[Any]]) -> bool:
        return values.exact_in_doubles(column_types)  # row_to_json keeps the declared types

    # -- capture triggers ---------------------------------------------------------------------

    def install_triggers(
        self, connection: Connection, ref: TableRef, columns: Iterable[str], state_schema: str
    ) -> None:
        _require_capture_function(connection, state_schema)
        self.drop_triggers(connection, ref, state_schema)
        function = f"{quote_ident(state_schema)}.capture()"
        name = f"{state_schema}_capture"
        connection.execute(
            text(
                f"CREATE TRIGGER {quote_ident(name)} AFTER INSERT OR UPDATE OR DELETE "
                f"ON {ref.quoted} FOR EACH ROW EXECUTE FUNCTION {function}"
            )
        )
        connection.execute(
            text(
                f"CREATE TRIGGER {quote_ident(name + '_truncate')} AFTER TRUNCATE ON "
                f"{ref.quoted} FOR EACH STATEMENT EXECUTE FUNCTION {function}"
            )
        )

    def drop_triggers(self, connection: Connection, ref: TableRef, state_schema: str) -> None:
        name = f"{state_schema}_capture"
        for trigger in (name, name + "_truncate"):
            connection.execute(
                text(f"DROP TRIGGER IF EXISTS {quote_ident(trigger)} ON {ref.quoted}")
            )

    def triggered_tables(self, connection: Connection, state_schema: str) -> list[str]:
        # Every capture trigger calls the state schema's capture(); NULL if it is gone.
        rows = connection.execute(
            text(
                "SELECT DISTINCT n.nspname || '.' || c.relname FROM pg_trigger t "
                "JOIN pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE t.tgfoid = to_regprocedure(:function)"
            ),
            {"function": f"{quote_ident(state_schema)}.capture()"},
        )
        return [row[0] for row in rows]

    def follow_schema_changes(
        self, connection: Connection, refs: Sequence[TableRef], state_schema: str
    ) -> dict[TableRef, Shape]:
        if not _install_ddl_trigger(connection, state_schema):
            return {}
        shapes: dict[TableRef, Shape] = {}
        for ref in refs:
            found = connection.execute(
                text(f'SELECT "{state_schema}".table_shape(CAST(:rel AS regclass))'),
                {"rel": ref.quoted},
            ).scalar_one()
            shapes[ref] = orjson.loads(found)
        return shapes

    # -- the change log and its checkpoints ----------------------------------------------------

    def changelog_select(self, log_table: str) -> str:
        return (
            "SELECT id, table_name, op, before::text, after::text, txid, origin, captured_at "
            f"FROM {log_table} ORDER BY id LIMIT %s"
        )

    def delete_changes(self, cursor: Any, log_table: str, ids: Sequence[int]) -> None:
        # Not waiting for this commit to reach the disk is safe: if a crash loses it, the rows
        # (and the dead letters, in the same transaction) come back and are published again
        # with the same ids. It saves a flush per batch.
        cursor.execute("SET LOCAL synchronous_commit = off")
        cursor.execute(f"DELETE FROM {log_table} WHERE id = ANY(%s)", (list(ids),))

    def checkpoint_upsert(self, table: str) -> str:
        return (
            f"INSERT INTO {table} AS c (stream, position, published, updated_at) "
            "VALUES (%s, %s, %s, now()) ON CONFLICT (stream) DO UPDATE SET "
            "position = greatest(c.position, excluded.position), "
            "published = c.published + excluded.published, updated_at = excluded.updated_at"
        )

    # -- backfill -------------------------------------------------------------------------------

    def page_sql(
        self,
        connection: Connection,
        ref: TableRef,
        columns: Iterable[str],
        key: Sequence[str],
        alias: str,
    ) -> PageSql:
        types = _column_types(connection, ref)
        selected = [f"{alias}.{quote_ident(c)}" for c in key]
        # Keys travel as text (the server's own output form) and are cast back: any type that
        # sorts works, and what is stored for resuming is plain JSON.
        return PageSql(
            image=f"row_to_json({alias})::text",
            source=f"{ref.quoted} AS {alias}",
            keys=", ".join(f"{c}::text" for c in selected),
            placeholders=", ".join(f"%s::{types[c]}" for c in key),
            limit="LIMIT %s",
        )

    def take_snapshot(
        self, raw: Any, logical: bool, changelog: str
    ) -> tuple[Callable[[Change], bool], Snapshot]:
        cursor = raw.cursor()
        cursor.execute("SELECT pg_current_snapshot()::text")
        snapshot = Snapshot.parse(cursor.fetchone()[0])
        if logical:
            return (
                lambda change: change.txid is None or not snapshot.sees_xid32(change.txid),
                snapshot,
            )
        return (lambda change: change.txid is None or not snapshot.sees(change.txid)), snapshot

    def write_watermark(
        self, cursor: Any, log_table: str, table: str, op: str, payload: str
    ) -> tuple[int, int]:
        cursor.execute(
            f"INSERT INTO {log_table} (table_name, op, after) "
            "VALUES (%s, %s, %s::json) RETURNING id, txid",
            (table, op, payload),
        )
        # A transaction holding a lower id took it before the watermark took its own, and
        # already had its xid then (from writing the legacy row that id records), while the
        # watermark's xid comes with this insert: every such writer has a lower xid.
        watermark_id, own = cursor.fetchone()
        return int(watermark_id), int(own)

    def writers_done(self, connection: Connection, below: int) -> bool:
        oldest = connection.execute(
            text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        ).scalar_one()
        return int(oldest) > below


def _column_types(connection: Connection, ref: TableRef) -> dict[str, str]:
    rows = connection.execute(
        text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = CAST(:table AS regclass) AND a.attnum > 0 "
            "AND NOT a.attisdropped"
        ),
        {"table": ref.quoted},
    ).all()
    return {name: kind for name, kind in rows}


def _require_capture_function(connection: Connection, state_schema: str) -> None:
    found = connection.execute(
        text("SELECT to_regprocedure(:name) IS NOT NULL"), {"name": f'"{state_schema}".capture()'}
    ).scalar()
    if not found:
        raise SetupError(
            f"the capture function {state_schema}.capture() is missing; run `cdc migrate` first"
        )


def _ddl_trigger_name(state_schema: str) -> str:
    return f"{state_schema}_capture_ddl"


def _install_ddl_trigger(connection: Connection, state_schema: str) -> bool:
    """The event trigger that records schema changes of captured tables at their position in
    the change log; False (with a warning) when this role may not create it."""
    name = _ddl_trigger_name(state_schema)
    exists = connection.execute(
        text("SELECT 1 FROM pg_event_trigger WHERE evtname = :n"), {"n": name}
    ).first()
    if exists:
        return True
    statement = (
        f"CREATE EVENT TRIGGER {quote_ident(name)} ON ddl_command_end "
        f"WHEN TAG IN ('ALTER TABLE') EXECUTE FUNCTION {quote_ident(state_schema)}.capture_ddl()"
    )
    try:
        with connection.begin_nested():
            connection.execute(text(statement))
    except exc.ProgrammingError as error:
        if "permission denied" not in str(error) and "must be superuser" not in str(error):
            raise
        log.warning(
            "schema changes of captured tables will not be followed at their position: only a "
            "superuser may create the event trigger that records them. As a superuser, run: %s; "
            "then `cdc setup` again",
            statement,
        )
        return False
    return True

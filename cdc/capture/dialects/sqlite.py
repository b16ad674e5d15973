"""Capture on SQLite: one writer at a time, and values kept as they were given.

SQLite cannot turn a row into JSON generically, so each table gets triggers that name its
columns (run ``cdc setup`` again after adding a column); ``json_object`` refuses BLOB values,
so a blob travels as ``["<hex>"]``. A column keeps whatever a row was given, whatever its
declared type, so conversion looks at the value as much as at the type. One writer at a time,
and change-log ids taken in commit order (``AUTOINCREMENT``, migration 0004), make a
backfill's snapshot simply the highest id given out, and a watermark ready at once.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy import types as sqltypes

from cdc.bus.events import Change
from cdc.capture import values
from cdc.capture.dialects.base import PageSql, Shape
from cdc.core.dialects.sqlite import PREFIX
from cdc.core.tables import TableRef, quote_ident

_OPS = ("insert", "update", "delete")
# A moment as SQLite applications write it, with its offset (or Z) at the end.
_ZONED = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d(:?\d\d)?)")


def _blob(value: Any) -> Any:
    # The triggers wrap blobs as ["<hex>"] because json_object cannot hold a BLOB.
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        try:
            return base64.b64encode(binascii.unhexlify(value[0])).decode("ascii")
        except binascii.Error:
            return value
    return value


def _exact_number(value: Any) -> Any:
    return values.exact_number(_blob(value))


def _timestamp(value: Any) -> Any:
    # A DATETIME/TIMESTAMP holds whatever the application wrote. Text that carries an offset
    # is a moment with a zone: published in UTC with 'Z', as a timestamptz is. Text without
    # one keeps its form (no zone is invented); numbers (epoch, Julian day) pass.
    if isinstance(value, str) and _ZONED.fullmatch(value):
        return values.timestamp_tz(value[:10] + "T" + value[11:])  # SQL's ' ' to ISO's 'T'
    return _blob(value)


def row_image(columns: Iterable[str], row: str, table: str | None = None) -> str:
    """A JSON object of the row's columns. With ``table``, each key is the column's name read
    from the catalog by its position when the trigger runs, so a ``RENAME COLUMN`` (which
    SQLite applies to the trigger's ``NEW.x`` too) is followed by the key at once."""
    parts = []
    for cid, column in enumerate(columns):
        value = f"{row}.{quote_ident(column)}"
        key = (
            _literal(column)
            if table is None
            else f"(SELECT name FROM pragma_table_info({_literal(table)}) WHERE cid = {cid})"
        )
        parts.append(
            f"{key}, CASE WHEN typeof({value}) = 'blob' "
            f"THEN json_array(hex({value})) ELSE {value} END"
        )
    return "json_object(" + ", ".join(parts) + ")"


class SqliteCapture:
    reads_ahead = False

    # -- values -----------------------------------------------------------------------------

    def converter(
        self, column_type: sqltypes.TypeEngine[Any], numerics_as_doubles: bool
    ) -> values.Convert:
        # Blobs need unwrapping whatever the declared type, and a NUMERIC/DECIMAL column is
        # published as an exact string, as on PostgreSQL.
        if isinstance(column_type, sqltypes.Numeric) and not isinstance(
            column_type, sqltypes.Float
        ):
            return _exact_number
        if isinstance(column_type, sqltypes.DateTime):
            return _timestamp
        return _blob

    def unknown_value(self, value: Any) -> Any:
        return _blob(value)

    def parses_into_doubles(self, column_types: dict[str, sqltypes.TypeEngine[Any]]) -> bool:
        return False  # a NUMERIC column holds any number, whatever its declared precision

    # -- capture triggers ---------------------------------------------------------------------

    def install_triggers(
        self, connection: Connection, ref: TableRef, columns: Iterable[str], state_schema: str
    ) -> None:
        self.drop_triggers(connection, ref, state_schema)
        columns = list(columns)
        name = ref.name
        images = {
            "insert": ("NULL", row_image(columns, "NEW", name)),
            "update": (row_image(columns, "OLD", name), row_image(columns, "NEW", name)),
            "delete": (row_image(columns, "OLD", name), "NULL"),
        }
        for op in _OPS:
            before, after = images[op]
            connection.execute(
                text(
                    f"CREATE TRIGGER {quote_ident(_trigger_name(ref, op))} AFTER {op.upper()} "
                    f"ON {quote_ident(ref.name)} BEGIN "
                    f"INSERT INTO {PREFIX}changelog (table_name, op, before, after, origin) "
                    f"VALUES ({_literal(ref.qualified)}, {_literal(op)}, {before}, {after}, "
                    f"(SELECT origin FROM {PREFIX}origin LIMIT 1)); END"
                )
            )

    def drop_triggers(self, connection: Connection, ref: TableRef, state_schema: str) -> None:
        for op in _OPS:
            connection.execute(
                text(f"DROP TRIGGER IF EXISTS {quote_ident(_trigger_name(ref, op))}")
            )

    def triggered_tables(self, connection: Connection, state_schema: str) -> list[str]:
        rows = connection.execute(
            text(
                "SELECT DISTINCT 'main.' || tbl_name FROM sqlite_master "
                "WHERE type = 'trigger' AND name LIKE 'cdc\\_capture\\_%' ESCAPE '\\'"
            )
        )
        return [row[0] for row in rows]

    def follow_schema_changes(
        self, connection: Connection, refs: Sequence[TableRef], state_schema: str
    ) -> dict[TableRef, Shape]:
        return {}  # no DDL triggers: a new column needs `cdc setup` again

    # -- the change log and its checkpoints ----------------------------------------------------

    def changelog_select(self, log_table: str) -> str:
        return (
            "SELECT id, table_name, op, before, after, txid, origin, captured_at "
            f"FROM {log_table} ORDER BY id LIMIT ?"
        )

    def delete_changes(self, cursor: Any, log_table: str, ids: Sequence[int]) -> None:
        cursor.executemany(f"DELETE FROM {log_table} WHERE id = ?", [(i,) for i in ids])

    def checkpoint_upsert(self, table: str) -> str:
        return (
            f"INSERT INTO {table} (stream, position, published, updated_at) "
            "VALUES (?, ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) "
            "ON CONFLICT (stream) DO UPDATE SET position = max(position, excluded.position), "
            "published = published + excluded.published, updated_at = excluded.updated_at"
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
        return PageSql(
            image=row_image(columns, alias),
            source=f"{quote_ident(ref.name)} AS {alias}",
            keys=", ".join(f"{alias}.{quote_ident(c)}" for c in key),
            placeholders=", ".join("?" for _ in key),
            limit="LIMIT ?",
        )

    def take_snapshot(
        self, raw: Any, logical: bool, changelog: str
    ) -> tuple[Callable[[Change], bool], None]:
        # One writer at a time, and ids taken in commit order: a change is invisible to the
        # read exactly when its id is past the highest id given out before it.
        cursor = raw.cursor()
        cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (changelog,))
        found = cursor.fetchone()
        seen = int(found[0]) if found else 0
        return (lambda change: int(change.position) > seen), None

    def write_watermark(
        self, cursor: Any, log_table: str, table: str, op: str, payload: str
    ) -> tuple[int, int]:
        cursor.execute(
            f"INSERT INTO {log_table} (table_name, op, after) VALUES (?, ?, ?)",
            (table, op, payload),
        )
        return int(cursor.lastrowid), 0  # one writer at a time: none can commit a lower id

    def writers_done(self, connection: Connection, below: int) -> bool:
        return True


def _trigger_name(ref: TableRef, op: str) -> str:
    return f"cdc_capture_{op}_{ref.name}"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"

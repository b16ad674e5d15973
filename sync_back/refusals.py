"""Refusals: a write the legacy database refused -> a dead-letter reason that names the column.

PostgreSQL names the column of some refusals (a NOT NULL violation), but not of a value that
does not fit its column's type: ``integer out of range``, ``numeric field overflow``, ``value
too long for type character varying(5)`` (SQLSTATE class 22, data exceptions) say nothing of
where. For those, each of the event's values is assigned alone, in a savepoint, to a column of
the legacy column's type in a temporary table, and the first value refused with the same
SQLSTATE names the column. ``CREATE TEMPORARY TABLE ... AS SELECT <the columns> FROM <the
legacy table> WITH NO DATA`` copies the columns' types with their precision, scale and length,
and nothing else (no constraint, trigger or default), so the assignment is the legacy
column's, and no legacy code runs. The transaction is rolled back, temporary table included.
This runs only for an event already found to be the one the database refuses.

SQLite refuses no value for its type, and its errors carry neither a SQLSTATE nor a column:
there the reason is the database's message alone.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, Engine, Table, column, insert, table, text
from sqlalchemy.exc import DBAPIError

from cdc.core.tables import quote_ident
from sync_back.rows import Pending, RowWrite
from sync_back.statements import value
from sync_back.writes import Bound, json_text

log = logging.getLogger(__name__)

DATA_EXCEPTION = "22"  # the SQLSTATE class of values that do not fit their type
PROBE_TABLE = "cdc_refusal_probe"


def reason(engine: Engine, legacy: Table, pending: Pending, error: DBAPIError) -> str:
    """The database's message, after the Detail path and column of the value it refused when
    that is one of the event's (``order.total (column total): numeric field overflow``)."""
    message = str(error.orig).strip().split("\n")[0]
    refused = refused_column(engine, legacy, pending.write, error)
    if refused is None or refused not in pending.mapping.columns:
        return message
    return f"{pending.mapping.where(refused)}: {message}"


def refused_column(engine: Engine, legacy: Table, write: RowWrite, error: DBAPIError) -> str | None:
    """The column whose value the database refused, as its error says, or as found by
    assigning the values one at a time; ``None`` when neither tells."""
    diagnostics = getattr(error.orig, "diag", None)
    named: str | None = getattr(diagnostics, "column_name", None)
    if named:
        return named
    sqlstate = _sqlstate(error)
    if sqlstate is None or not sqlstate.startswith(DATA_EXCEPTION):
        return None
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            try:
                return _probe(connection, legacy, write, sqlstate)
            finally:
                transaction.rollback()
    except DBAPIError as exc:  # the probe itself failed (no TEMP privilege, a lost connection)
        log.warning("could not find which column of %s was refused: %s", write.table.qualified, exc)
        return None


def _probe(connection: Connection, legacy: Table, write: RowWrite, sqlstate: str) -> str | None:
    """The first of the write's columns whose value alone is refused with ``sqlstate``."""
    columns = [c for c in write.values if c in legacy.c]
    connection.execute(
        text(
            f"CREATE TEMPORARY TABLE {PROBE_TABLE} ON COMMIT DROP AS SELECT "
            f"{', '.join(quote_ident(c) for c in columns)} FROM {write.table.quoted} WITH NO DATA"
        )
    )
    for name in columns:
        bound = Bound(name, json_text(legacy, name, write.values[name]))
        probe = insert(table(PROBE_TABLE, column(name))).values({name: value(legacy, bound, "v")})
        try:
            with connection.begin_nested():
                connection.execute(probe, {"v": write.values[name]})
        except DBAPIError as exc:
            if _sqlstate(exc) == sqlstate:
                return name
    return None


def _sqlstate(error: DBAPIError) -> str | None:
    state = getattr(error.orig, "sqlstate", None)  # psycopg's errors have one, sqlite3's not
    return state if isinstance(state, str) else None

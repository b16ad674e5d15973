"""``cdc setup`` in ``changelog`` mode: capture triggers on the tracked legacy tables.

What the triggers are differs by database (``cdc.capture.dialects``): on PostgreSQL one
generic row trigger and one truncate trigger per table, both calling ``<state
schema>.capture()`` (created by the migrations), so a column added or dropped later needs no
new setup; on SQLite triggers that name the table's columns, so run ``cdc setup`` again after
adding a column there. Installing is idempotent: existing triggers are replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import Engine

from cdc.capture import history
from cdc.capture.catalog import TableInfo
from cdc.capture.dialects import capture_of
from cdc.core.dialects import dialect_of
from cdc.core.errors import SetupError
from cdc.core.state import state_tables
from cdc.core.tables import TableRef

log = logging.getLogger(__name__)


def check_capturable(info: TableInfo) -> None:
    if not info.key:
        raise SetupError(
            f"table {info.ref.qualified} has no primary key, so its changes cannot be keyed. "
            f"Add one (ALTER TABLE {info.ref.qualified} ADD PRIMARY KEY (...)) "
            "or leave the table out of CDC_TABLES."
        )


def install(engine: Engine, infos: Iterable[TableInfo], state_schema: str) -> None:
    infos = list(infos)
    for info in infos:
        check_capturable(info)
    dialect = dialect_of(engine)
    capture = capture_of(dialect)
    with engine.begin() as connection:
        for info in infos:
            capture.install_triggers(connection, info.ref, info.columns, state_schema)
            log.info("capture triggers installed on %s", info.ref.qualified)
        shapes = capture.follow_schema_changes(
            connection, [info.ref for info in infos], state_schema
        )
        if not shapes:
            return
        # The shape now is where each table's history starts (or its next version, when the
        # table changed while its DDL was not tracked).
        state = state_tables(dialect, state_schema)
        position = history.latest_position(connection, state)
        for ref, shape in shapes.items():
            history.record(connection, state, ref, shape, position)


def drop(engine: Engine, tables: Iterable[TableRef], state_schema: str) -> list[TableRef]:
    """Remove the capture triggers of ``tables``; the tables that had them."""
    tables = list(tables)
    had = set(installed(engine, state_schema))
    capture = capture_of(dialect_of(engine))
    with engine.begin() as connection:
        for ref in tables:
            capture.drop_triggers(connection, ref, state_schema)
    removed = [ref for ref in tables if ref.qualified in had]
    for ref in removed:
        log.info("capture triggers removed from %s", ref.qualified)
    return removed


def installed(engine: Engine, state_schema: str) -> list[str]:
    """The tables (schema.table) that carry capture triggers, whichever CDC_TABLES named them."""
    capture = capture_of(dialect_of(engine))
    with engine.connect() as connection:
        return sorted(capture.triggered_tables(connection, state_schema))

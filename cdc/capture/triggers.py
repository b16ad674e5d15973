"""``cdc setup`` in ``changelog`` mode: capture triggers on the tracked legacy tables.

PostgreSQL: one generic row trigger and one truncate trigger per table, both calling
``<state schema>.capture()`` (created by the migrations), which stores ``row_to_json`` images, so
a column added or dropped later needs no new setup. SQLite cannot turn a row into JSON
generically, so each table gets triggers that name its columns; run ``cdc setup`` again after
adding a column there. Installing is idempotent: existing triggers are replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import Connection, Engine, exc, text

from cdc.capture import history
from cdc.capture.catalog import TableInfo
from cdc.core.errors import SetupError
from cdc.core.state import state_tables
from cdc.core.tables import TableRef, quote_ident

log = logging.getLogger(__name__)
_SQLITE_OPS = ("insert", "update", "delete")


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
    with engine.begin() as connection:
        for info in infos:
            if engine.dialect.name == "sqlite":
                _drop_sqlite(connection, info.ref)
                _install_sqlite(connection, info)
            else:
                _require_capture_function(connection, state_schema)
                _drop_postgres(connection, info.ref, state_schema)
                _install_postgres(connection, info.ref, state_schema)
            log.info("capture triggers installed on %s", info.ref.qualified)
        if engine.dialect.name != "postgresql" or not _install_ddl_trigger(
            connection, state_schema
        ):
            return
        # The shape now is where each table's history starts (or its next version, when the
        # table changed while its DDL was not tracked).
        state = state_tables(engine.dialect.name, state_schema)
        position = history.latest_position(connection, state)
        for info in infos:
            shape = history.current_shape(connection, info.ref, state_schema)
            history.record(connection, state, info.ref, shape, position)


def ddl_trigger_name(state_schema: str) -> str:
    return f"{state_schema}_capture_ddl"


def _install_ddl_trigger(connection: Connection, state_schema: str) -> bool:
    """The event trigger that records schema changes of captured tables at their position in
    the change log; False (with a warning) when this role may not create it."""
    name = ddl_trigger_name(state_schema)
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


def drop(engine: Engine, tables: Iterable[TableRef], state_schema: str) -> list[TableRef]:
    """Remove the capture triggers of ``tables``; the tables that had them."""
    tables = list(tables)
    had = set(installed(engine, state_schema))
    with engine.begin() as connection:
        for ref in tables:
            if engine.dialect.name == "sqlite":
                _drop_sqlite(connection, ref)
            else:
                _drop_postgres(connection, ref, state_schema)
    removed = [ref for ref in tables if ref.qualified in had]
    for ref in removed:
        log.info("capture triggers removed from %s", ref.qualified)
    return removed


def installed(engine: Engine, state_schema: str) -> list[str]:
    """The tables (schema.table) that carry capture triggers, whichever CDC_TABLES named them."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            rows = connection.execute(
                text(
                    "SELECT DISTINCT 'main.' || tbl_name FROM sqlite_master "
                    "WHERE type = 'trigger' AND name LIKE 'cdc\\_capture\\_%' ESCAPE '\\'"
                )
            )
        else:
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
        return sorted(row[0] for row in rows)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _require_capture_function(connection: Connection, state_schema: str) -> None:
    found = connection.execute(
        text("SELECT to_regprocedure(:name) IS NOT NULL"), {"name": f'"{state_schema}".capture()'}
    ).scalar()
    if not found:
        raise SetupError(
            f"the capture function {state_schema}.capture() is missing; run `cdc migrate` first"
        )


def _install_postgres(connection: Connection, ref: TableRef, state_schema: str) -> None:
    function = f"{quote_ident(state_schema)}.capture()"
    name = f"{state_schema}_capture"
    connection.execute(
        text(
            f"CREATE TRIGGER {quote_ident(name)} AFTER INSERT OR UPDATE OR DELETE ON {ref.quoted} "
            f"FOR EACH ROW EXECUTE FUNCTION {function}"
        )
    )
    connection.execute(
        text(
            f"CREATE TRIGGER {quote_ident(name + '_truncate')} AFTER TRUNCATE ON {ref.quoted} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {function}"
        )
    )


def _drop_postgres(connection: Connection, ref: TableRef, state_schema: str) -> None:
    name = f"{state_schema}_capture"
    for trigger in (name, name + "_truncate"):
        connection.execute(text(f"DROP TRIGGER IF EXISTS {quote_ident(trigger)} ON {ref.quoted}"))


def _sqlite_trigger_name(ref: TableRef, op: str) -> str:
    return f"cdc_capture_{op}_{ref.name}"


def sqlite_image(columns: Iterable[str], row: str, table: str | None = None) -> str:
    """A JSON object of the row's columns. With ``table``, each key is the column's name read
    from the catalog by its position when the trigger runs, so a ``RENAME COLUMN`` (which
    SQLite applies to the trigger's ``NEW.x`` too) is followed by the key at once."""
    # json_object refuses BLOB values: a blob travels as ["<hex>"], which values.py unwraps.
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


def _install_sqlite(connection: Connection, info: TableInfo) -> None:
    ref = info.ref
    name = ref.name
    images = {
        "insert": ("NULL", sqlite_image(info.columns, "NEW", name)),
        "update": (
            sqlite_image(info.columns, "OLD", name),
            sqlite_image(info.columns, "NEW", name),
        ),
        "delete": (sqlite_image(info.columns, "OLD", name), "NULL"),
    }
    for op in _SQLITE_OPS:
        before, after = images[op]
        connection.execute(
            text(
                f"CREATE TRIGGER {quote_ident(_sqlite_trigger_name(ref, op))} AFTER {op.upper()} "
                f"ON {quote_ident(ref.name)} BEGIN "
                f"INSERT INTO cdc_changelog (table_name, op, before, after, origin) VALUES ("
                f"{_literal(ref.qualified)}, {_literal(op)}, {before}, {after}, "
                f"(SELECT origin FROM cdc_origin LIMIT 1)); END"
            )
        )


def _drop_sqlite(connection: Connection, ref: TableRef) -> None:
    for op in _SQLITE_OPS:
        connection.execute(
            text(f"DROP TRIGGER IF EXISTS {quote_ident(_sqlite_trigger_name(ref, op))}")
        )

"""``cdc setup`` in ``logical`` mode: the publication of the tracked tables and the slot.

Uses the ones a DBA created when they exist (names from settings), creates them otherwise, and
says what is missing with the SQL that fixes it: wal_level, the REPLICATION privilege, a
replica identity for a table without a primary key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import Connection, Engine, text

from cdc.capture.catalog import TableInfo
from cdc.core.errors import SetupError
from cdc.core.tables import quote_ident

log = logging.getLogger(__name__)


def check_server(connection: Connection) -> None:
    level = connection.execute(text("SHOW wal_level")).scalar_one()
    if level != "logical":
        raise SetupError(
            f"wal_level is {level!r}; logical decoding needs 'logical'. As a superuser: "
            "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL."
        )
    allowed = connection.execute(
        text("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user")
    ).scalar_one()
    if not allowed:
        user = connection.execute(text("SELECT current_user")).scalar_one()
        raise SetupError(
            f"role {user!r} may not stream changes; as a superuser: "
            f"ALTER ROLE {quote_ident(user)} WITH REPLICATION;"
        )


def check_identity(connection: Connection, info: TableInfo) -> None:
    if info.key:
        return
    identity = connection.execute(
        text("SELECT relreplident FROM pg_class WHERE oid = CAST(:t AS regclass)"),
        {"t": info.ref.quoted},
    ).scalar_one()
    if identity != "i":
        raise SetupError(
            f"table {info.ref.qualified} has no primary key, so its changes cannot be keyed. Add "
            f"one, or a unique index on NOT NULL columns and ALTER TABLE {info.ref.qualified} "
            "REPLICA IDENTITY USING INDEX <index>; or leave the table out of CDC_TABLES."
        )


def install(engine: Engine, infos: Iterable[TableInfo], slot: str, publication: str) -> None:
    infos = list(infos)
    with engine.begin() as connection:
        check_server(connection)
        for info in infos:
            check_identity(connection, info)
        names = [i.ref.quoted for i in infos]
        exists = connection.execute(
            text("SELECT 1 FROM pg_publication WHERE pubname = :p"), {"p": publication}
        ).first()
        if exists is None:
            connection.execute(
                text(f"CREATE PUBLICATION {quote_ident(publication)} FOR TABLE {', '.join(names)}")
            )
            log.info("publication %s created", publication)
        else:
            published = {
                f"{row.schemaname}.{row.tablename}"
                for row in connection.execute(
                    text(
                        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = :p"
                    ),
                    {"p": publication},
                )
            }
            for info, name in zip(infos, names, strict=True):
                if info.ref.qualified not in published:
                    connection.execute(
                        text(f"ALTER PUBLICATION {quote_ident(publication)} ADD TABLE {name}")
                    )
                    log.info("%s added to publication %s", info.ref.qualified, publication)
    # A slot cannot be created in a transaction that has written (it must be the first thing).
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT plugin FROM pg_replication_slots WHERE slot_name = :s"), {"s": slot}
        ).first()
        if row is None:
            connection.execute(
                text("SELECT pg_create_logical_replication_slot(:s, 'pgoutput')"), {"s": slot}
            )
            connection.commit()
            log.info("replication slot %s created", slot)
        elif row.plugin != "pgoutput":
            raise SetupError(
                f"replication slot {slot!r} exists with the {row.plugin!r} plugin; "
                "name another slot in CDC_SLOT_NAME or drop it"
            )


def drop(engine: Engine, slot: str, publication: str) -> list[str]:
    """Remove the slot and the publication; what there was of them ("replication slot x",
    "publication y")."""
    removed = existing(engine, slot, publication)
    with engine.connect() as connection:
        if f"replication slot {slot}" in removed:
            connection.execute(text("SELECT pg_drop_replication_slot(:s)"), {"s": slot})
        connection.execute(text(f"DROP PUBLICATION IF EXISTS {quote_ident(publication)}"))
        connection.commit()
    for what in removed:
        log.info("%s removed", what)
    return removed


def existing(engine: Engine, slot: str, publication: str) -> list[str]:
    """Which of the slot and the publication exist ("replication slot x", "publication y")."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = :s), "
                "EXISTS (SELECT 1 FROM pg_publication WHERE pubname = :p)"
            ),
            {"s": slot, "p": publication},
        ).one()
    return [
        what
        for what, there in (
            (f"replication slot {slot}", row[0]),
            (f"publication {publication}", row[1]),
        )
        if there
    ]

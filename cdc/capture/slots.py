"""The ``logical`` mode's publication and replication slot: everything that asks
``pg_replication_slots``.

``cdc setup`` uses the ones a DBA created when they exist (names from settings), creates them
otherwise, and says what is missing with the SQL that fixes it: wal_level, the REPLICATION
privilege, a replica identity for a table without a primary key. The source checks the slot
before it streams (``check_slot``); ``cdc status`` and the metrics read what WAL it holds
(``slot_status``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

from cdc.capture.catalog import TableInfo
from cdc.core.dialects import dialect_of
from cdc.core.errors import PermanentError, SetupError
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
    if not dialect_of(engine).logical_replication:
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


def slot_lost_message(slot: str) -> str:
    return (
        f"replication slot {slot!r} was invalidated by PostgreSQL (wal_status = lost): WAL it "
        "still needed was removed (max_slot_wal_keep_size), so changes were lost before they "
        "could be read. Recreate the slot with `cdc setup --drop` and `cdc setup`, then "
        "backfill the tracked tables to repair the gap."
    )


def check_slot(engine: Engine, slot: str) -> int:
    """The slot's confirmed flush LSN, after checking that the slot can be streamed."""
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT plugin, wal_status, "
                "pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint AS confirmed "
                "FROM pg_replication_slots WHERE slot_name = :s"
            ),
            {"s": slot},
        ).first()
    if row is None:
        raise PermanentError(
            f"replication slot {slot!r} does not exist; run `cdc setup` "
            "(or name the DBA's slot in CDC_SLOT_NAME)"
        )
    if row.plugin != "pgoutput":
        raise PermanentError(
            f"replication slot {slot!r} uses the {row.plugin!r} plugin; "
            "the logical mode needs a pgoutput slot"
        )
    if row.wal_status == "lost":
        raise PermanentError(slot_lost_message(slot))
    return int(row.confirmed or 0)


@dataclass(frozen=True)
class SlotStatus:
    exists: bool
    wal_status: str | None = None
    active: bool = False
    lag_bytes: int | None = None
    confirmed_flush_lsn: str | None = None
    retained_bytes: int | None = None  # WAL kept for the slot: current LSN - restart LSN
    wal_keep_size_bytes: int | None = None  # max_slot_wal_keep_size; -1: unlimited


def slot_status(engine: Engine, slot: str) -> SlotStatus:
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT wal_status, active, confirmed_flush_lsn::text AS flushed, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained, "
                "pg_size_bytes(current_setting('max_slot_wal_keep_size')) AS keep "
                "FROM pg_replication_slots WHERE slot_name = :s"
            ),
            {"s": slot},
        ).first()
    if row is None:
        return SlotStatus(False)
    return SlotStatus(
        True, row.wal_status, row.active, row.lag, row.flushed, row.retained, row.keep
    )

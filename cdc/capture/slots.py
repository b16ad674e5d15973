"""The ``logical`` mode's publication and replication slot: everything that asks
``pg_replication_slots``.

``cdc setup`` uses the ones a DBA created when they exist (names from settings), creates them
otherwise, and says what is missing with the SQL that fixes it: wal_level, the REPLICATION
privilege, a replica identity for a table without a primary key. The publication is made to
hold exactly CDC_TABLES (tables are added and removed; the slot, and so its position, stays);
a ``FOR ALL TABLES`` publication is refused, not managed. A slot is server-wide but streams
one database: one of another database is refused by name, and the default name is derived
from the database's (``slot_name``). The source checks the slot before it streams
(``check_slot``); ``cdc status`` and the metrics read what WAL it holds (``slot_status``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

from cdc.capture.catalog import TableInfo
from cdc.core.dialects import dialect_of
from cdc.core.errors import PermanentError, SetupError
from cdc.core.tables import TableRef, quote_ident

log = logging.getLogger(__name__)

# The default slot name before it was derived from the database: a database that has a slot
# of this name keeps using it when CDC_SLOT_NAME is unset.
LEGACY_SLOT_NAME = "cdc_slot"
_SLOT_NAME_MAX = 63  # NAMEDATALEN - 1


def default_slot_name(database: str) -> str:
    """``cdc_<database>``, in the characters a slot name may hold (a-z, 0-9, _). A name that had
    to be changed or cut to fit gets 8 hex digits of the database name's hash, so that two
    databases of one server never derive the same slot name."""
    safe = re.sub(r"[^a-z0-9_]", "_", database.lower())
    name = f"cdc_{safe}"
    if safe != database or len(name) > _SLOT_NAME_MAX:
        digest = hashlib.sha1(database.encode()).hexdigest()[:8]
        name = f"{name[: _SLOT_NAME_MAX - 9]}_{digest}"
    return name


def choose_slot_name(configured: str | None, database: str, legacy_database: str | None) -> str:
    """The slot of this database: the configured one; else the old default ``cdc_slot`` when
    it exists for this database (``legacy_database``: the database it belongs to, if any), so
    that a deployment set up before keeps its slot and position; else the derived name."""
    if configured:
        return configured
    if legacy_database == database:
        return LEGACY_SLOT_NAME
    return default_slot_name(database)


def slot_name(engine: Engine, configured: str | None) -> str:
    """``choose_slot_name`` with what the server says (no query when a name is configured)."""
    if configured:
        return configured
    if not dialect_of(engine).logical_replication:
        return LEGACY_SLOT_NAME  # no slots: only a lease name is made of it
    with engine.connect() as connection:
        here, legacy = connection.execute(
            text(
                "SELECT current_database(), "
                "(SELECT database FROM pg_replication_slots WHERE slot_name = :s)"
            ),
            {"s": LEGACY_SLOT_NAME},
        ).one()
    return choose_slot_name(None, here, legacy)


def slot_elsewhere_message(slot: str, database: str | None, here: str) -> str:
    owner = f"belongs to database {database!r}" if database else "is a physical slot"
    return (
        f"replication slot {slot!r} {owner}, and a slot streams only the database it was "
        f"created in ({here!r} here); set CDC_SLOT_NAME to a slot of this database's own (unset, "
        f"it is {default_slot_name(here)!r}), which `cdc setup` creates"
    )


@dataclass(frozen=True)
class Publication:
    all_tables: bool  # FOR ALL TABLES
    schemas: tuple[str, ...]  # FOR TABLES IN SCHEMA (PostgreSQL 15 and later)
    tables: frozenset[TableRef]  # every table it publishes, however it names them


def publication_of(connection: Connection, name: str) -> Publication | None:
    """The publication as the server describes it; None when this database has none so named."""
    row = connection.execute(
        text(
            "SELECT oid, puballtables, current_setting('server_version_num')::int AS version "
            "FROM pg_publication WHERE pubname = :p"
        ),
        {"p": name},
    ).first()
    if row is None:
        return None
    schemas: tuple[str, ...] = ()
    if row.version >= 150000:
        schemas = tuple(
            connection.execute(
                text(
                    "SELECT n.nspname FROM pg_publication_namespace p "
                    "JOIN pg_namespace n ON n.oid = p.pnnspid WHERE p.pnpubid = :oid"
                ),
                {"oid": row.oid},
            ).scalars()
        )
    tables = frozenset(
        TableRef(schema, table)
        for schema, table in connection.execute(
            text("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = :p"),
            {"p": name},
        )
    )
    return Publication(bool(row.puballtables), schemas, tables)


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
        exists = _check_slot_is_usable(connection, slot)  # before anything is changed
        reconcile(connection, [i.ref for i in infos], publication)
    if exists:
        return
    # A slot cannot be created in a transaction that has written (it must be the first thing).
    with engine.connect() as connection:
        connection.execute(
            text("SELECT pg_create_logical_replication_slot(:s, 'pgoutput')"), {"s": slot}
        )
        connection.commit()
    log.info("replication slot %s created", slot)


def _check_slot_is_usable(connection: Connection, slot: str) -> bool:
    """Whether the slot exists, after checking that one that does can stream this database."""
    row = connection.execute(
        text(
            "SELECT current_database() AS here, s.slot_name, s.plugin, s.database "
            "FROM (VALUES (1)) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = :s"
        ),
        {"s": slot},
    ).one()
    if row.slot_name is None:
        return False
    if row.database != row.here:
        raise SetupError(slot_elsewhere_message(slot, row.database, row.here))
    if row.plugin != "pgoutput":
        raise SetupError(
            f"replication slot {slot!r} exists with the {row.plugin!r} plugin; "
            "name another slot in CDC_SLOT_NAME or drop it"
        )
    return True


def reconcile(connection: Connection, refs: list[TableRef], name: str) -> None:
    """Make the publication publish exactly ``refs``: created FOR TABLE when missing, tables
    added and removed otherwise (the slot is untouched, so it keeps its position). A publication
    FOR ALL TABLES or FOR TABLES IN SCHEMA is a DBA's, and is refused rather than changed."""
    found = publication_of(connection, name)
    quoted = quote_ident(name)
    if found is None:
        tables = ", ".join(ref.quoted for ref in refs)
        connection.execute(text(f"CREATE PUBLICATION {quoted} FOR TABLE {tables}"))
        log.info("publication %s created", name)
        return
    if found.all_tables or found.schemas:
        what = (
            "FOR ALL TABLES"
            if found.all_tables
            else f"FOR TABLES IN SCHEMA {', '.join(found.schemas)}"
        )
        raise SetupError(
            f"publication {name!r} is {what}: it streams tables beside CDC_TABLES (the worker "
            "drops their changes, but they still leave the database), and `cdc setup` changes "
            "only a publication that lists its tables. Set CDC_PUBLICATION_NAME to a new name "
            "for `cdc setup` to create it FOR TABLE CDC_TABLES, or have it altered to list them"
        )
    for ref in refs:
        if ref not in found.tables:
            connection.execute(text(f"ALTER PUBLICATION {quoted} ADD TABLE {ref.quoted}"))
            log.info("%s added to publication %s", ref.qualified, name)
    for ref in sorted(found.tables - set(refs)):
        connection.execute(text(f"ALTER PUBLICATION {quoted} DROP TABLE {ref.quoted}"))
        log.info("%s removed from publication %s (not in CDC_TABLES)", ref.qualified, name)


def drop(engine: Engine, slot: str, publication: str) -> list[str]:
    """Remove the slot and the publication; what there was of them ("replication slot x",
    "publication y")."""
    removed = existing(engine, slot, publication)
    with engine.connect() as connection:
        if f"replication slot {slot}" in removed:
            # A worker that just stopped leaves its walsender for a moment: a slot still
            # active then cannot be dropped yet.
            for _ in range(50):
                active = connection.execute(
                    text("SELECT active FROM pg_replication_slots WHERE slot_name = :s"),
                    {"s": slot},
                ).scalar()
                if not active:
                    break
                connection.rollback()
                time.sleep(0.1)
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
                "SELECT current_database() AS here, s.slot_name, s.plugin, s.database, "
                "s.wal_status, pg_wal_lsn_diff(s.confirmed_flush_lsn, '0/0')::bigint AS confirmed "
                "FROM (VALUES (1)) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = :s"
            ),
            {"s": slot},
        ).one()
    if row.slot_name is None:
        raise PermanentError(
            f"replication slot {slot!r} does not exist; run `cdc setup` "
            "(or name the DBA's slot in CDC_SLOT_NAME)"
        )
    if row.database != row.here:
        raise PermanentError(slot_elsewhere_message(slot, row.database, row.here))
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

"""What only the logical mode has: TOAST, replica identity, truncate, key changes, schema
changes, big transactions in bounded batches, origin messages, an invalidated slot, exactly
CDC_TABLES published whatever the publication holds, and slots of another database refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from cdc.bus.events import BusEntry
from cdc.bus.publishers import Rejection
from cdc.capture import slots
from cdc.capture.catalog import read_table
from cdc.capture.sources.logical import LogicalSource
from cdc.capture.worker import Worker
from cdc.core import database
from cdc.core.dialects import dialect_of
from cdc.core.errors import PermanentError, SetupError
from cdc.core.settings import Settings
from tests.conftest import RUN_ID
from tests.databases import database_name, drop_databases
from tests.integration.helpers import drop_slot, prepared, settings_for_mode, source_for

pytestmark = pytest.mark.integration

DOCS = "CREATE TABLE docs (id int PRIMARY KEY, title text, body text, n numeric(6,2))"


class Recorder:
    def __init__(self) -> None:
        self.entries: list[BusEntry] = []

    def publish(self, entries: list[BusEntry]) -> list[Rejection]:
        self.entries.extend(entries)
        return []

    def close(self) -> None:
        pass

    @property
    def details(self) -> list[dict[str, Any]]:
        return [json.loads(e.detail) for e in self.entries]


def drain(
    settings: Settings, source: Any, recorder: Recorder, rounds: int = 3
) -> list[dict[str, Any]]:
    worker = Worker(settings, source, recorder)
    idle = 0
    while idle < rounds:
        idle = 0 if worker.step() else idle + 1
    return recorder.details


def logical(
    pg_url: URL, ddl: str = DOCS, tables: str = "docs", **extra: str
) -> tuple[Settings, Engine, Any]:
    settings = settings_for_mode(pg_url, "logical", tables, **extra)
    engine = prepared(settings, ddl)
    return settings, engine, source_for(settings, engine)


def write(engine: Engine, *statements: str) -> None:
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))


def test_toast_truncate_key_change_and_added_column(pg_url: URL) -> None:
    settings, engine, source = logical(pg_url)
    big = "lorem ipsum " * 50_000  # TOASTed (compressed out of line)
    write(engine, f"INSERT INTO docs VALUES (1, 'a', '{big}', 1.5)")
    write(engine, "UPDATE docs SET title = 'b' WHERE id = 1")  # body left unchanged
    write(engine, "UPDATE docs SET id = 2 WHERE id = 1")
    write(
        engine,
        "ALTER TABLE docs ADD COLUMN tags text[]",
        "INSERT INTO docs (id, title, tags) VALUES (3, 'c', '{x,\"y z\"}')",
    )
    write(engine, "TRUNCATE docs")
    recorder = Recorder()
    details = drain(settings, source, recorder, rounds=5)
    ops = [(d["op"], d["key"]) for d in details]
    assert ops == [
        ("insert", {"id": 1}),
        ("update", {"id": 1}),
        ("delete", {"id": 1}),
        ("insert", {"id": 2}),
        ("schema", None),  # the added column: version 2, before the change that shows it
        ("insert", {"id": 3}),
        ("truncate", None),
    ]
    assert details[4]["schema_version"] == 2 == details[5]["schema_version"]
    assert details[4]["after"]["columns"][-1] == {
        "name": "tags",
        "type": "text[]",
        "nullable": True,
    }
    details = [d for d in details if d["op"] != "schema"]
    inserted, updated, deleted, _moved, added, truncated = details
    assert inserted["after"]["body"] == big and inserted["after"]["n"] == "1.50"
    # An unchanged TOASTed column is listed, never published as null
    assert updated["unchanged"] == ["body"] and "body" not in updated["after"]
    assert updated["before"] is None  # default replica identity sends no old row
    assert deleted["before"] == {"id": 1}  # the old key only
    assert added["after"]["tags"] == ["x", "y z"]
    assert truncated["table"] == "public.docs"
    positions = [d["position"] for d in details]
    assert positions == sorted(positions)


def test_replica_identity_full_gives_whole_before_images(pg_url: URL) -> None:
    settings, engine, source = logical(pg_url, DOCS + "; ALTER TABLE docs REPLICA IDENTITY FULL")
    write(engine, "INSERT INTO docs VALUES (1, 'a', 'body', 2)")
    write(engine, "UPDATE docs SET n = 3 WHERE id = 1")
    write(engine, "DELETE FROM docs WHERE id = 1")
    details = drain(settings, source, Recorder())
    assert details[1]["before"] == {"id": 1, "title": "a", "body": "body", "n": "2.00"}
    assert details[1]["after"]["n"] == "3.00"
    assert details[2]["before"] == {"id": 1, "title": "a", "body": "body", "n": "3.00"}


def test_a_big_transaction_is_published_in_bounded_batches(pg_url: URL) -> None:
    _settings, engine, source = logical(pg_url, batch_size="100")
    write(engine, "INSERT INTO docs (id, title) SELECT g, 't' FROM generate_series(1, 2000) g")
    sizes: list[int] = []
    flushes: list[int] = []
    while True:
        batch = source.read(100)
        flushes.append(batch.flush_lsn)
        if not batch.changes:
            break
        sizes.append(len(batch.changes))
        source.ack(batch, [])
    assert sum(sizes) == 2000 and max(sizes) <= 100
    # Nothing of the transaction may be confirmed before its last change was read (its
    # commit may come with the last batch or just after it)
    assert len(set(flushes[:-2])) == 1 and flushes[-1] > flushes[0]
    source.close()


def test_sync_back_transactions_are_recognised_by_their_origin_message(pg_url: URL) -> None:
    settings, engine, source = logical(pg_url)
    with (
        engine.begin() as connection,
        dialect_of(connection).origin_tag(connection, "sync_back", logical=True),
    ):
        connection.execute(text("INSERT INTO docs (id, title) VALUES (1, 'from the new system')"))
    write(engine, "INSERT INTO docs (id, title) VALUES (2, 'legacy edit')")
    details = drain(settings, source, Recorder())
    assert [d["key"] for d in details] == [{"id": 2}]
    with (
        engine.begin() as connection,
        dialect_of(connection).origin_tag(connection, "sync_back", logical=True),
    ):
        connection.execute(text("UPDATE docs SET title = 'again' WHERE id = 1"))
    noisy = settings.model_copy(update={"skip_origins": []})
    [echo] = drain(noisy, source, Recorder())
    assert echo["origin"] == "sync_back"


def test_setup_explains_what_is_missing(pg_url: URL) -> None:
    settings = settings_for_mode(pg_url, "logical", "logbook")
    engine = database.connect(settings)
    write(engine, "CREATE TABLE logbook (line text)")
    database.migrate(engine, settings)
    with pytest.raises(SetupError, match="REPLICA IDENTITY USING INDEX"):
        slots.install(
            engine,
            [read_table(engine, t) for t in settings.table_refs],
            settings.slot_name,
            settings.publication_name,
        )
    # A unique index as replica identity is enough: its columns key the events
    write(
        engine,
        "ALTER TABLE logbook ALTER COLUMN line SET NOT NULL",
        "CREATE UNIQUE INDEX logbook_line ON logbook (line)",
        "ALTER TABLE logbook REPLICA IDENTITY USING INDEX logbook_line",
    )
    slots.install(
        engine,
        [read_table(engine, t) for t in settings.table_refs],
        settings.slot_name,
        settings.publication_name,
    )


def test_an_invalidated_slot_stops_the_worker_with_a_clear_message(pg_url: URL) -> None:
    settings, _engine, source = logical(pg_url)
    admin = database.connect(settings).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'"))
        connection.execute(text("SELECT pg_reload_conf()"))
    try:
        with admin.connect() as connection:
            for _ in range(6):
                connection.execute(
                    text(
                        "CREATE TEMP TABLE IF NOT EXISTS filler (x text); "
                        "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)"
                    )
                )
                connection.execute(text("SELECT pg_switch_wal()"))
            connection.execute(text("CHECKPOINT"))
            status = connection.execute(
                text("SELECT wal_status FROM pg_replication_slots WHERE slot_name = :s"),
                {"s": settings.slot_name},
            ).scalar_one()
        assert status == "lost"
        with pytest.raises(PermanentError, match="invalidated by PostgreSQL"):
            source.read(10)
    finally:
        with admin.connect() as connection:
            connection.execute(text("ALTER SYSTEM RESET max_slot_wal_keep_size"))
            connection.execute(text("SELECT pg_reload_conf()"))
    assert isinstance(source, LogicalSource)


@pytest.mark.parametrize("busy", ["same database", "another database"])
def test_quiet_tables_on_a_busy_server_still_advance_the_slot(
    pg_url: URL, postgres_server: URL, busy: str
) -> None:
    # On PostgreSQL 15 the walsender's keepalives carry the slot here even without the
    # heartbeat; test_heartbeat.py shows the heartbeat itself at work.
    settings, engine, source = logical(
        pg_url,
        DOCS + "; CREATE TABLE other (id serial PRIMARY KEY, x text)",
        heartbeat_interval="0.2",
    )
    # In another database, WAL that this slot's decoder skips: non-transactional messages
    noise = (
        "INSERT INTO other (x) SELECT repeat('y', 500) FROM generate_series(1, 50)"
        if busy == "same database"
        else "SELECT pg_logical_emit_message(false, 'noise', repeat('y', 20000))"
    )
    elsewhere = engine if busy == "same database" else create_engine(postgres_server)

    def confirmed() -> int:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0') FROM pg_replication_slots "
                        "WHERE slot_name = :s"
                    ),
                    {"s": settings.slot_name},
                ).scalar_one()
            )

    source.read(10)  # connect
    start = confirmed()
    # Only an untracked table changes: no row of the publication ever reaches the stream
    for _ in range(20):
        write(elsewhere, noise)
    with engine.connect() as connection:
        written = int(
            connection.execute(
                text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
            ).scalar_one()
        )
    import time

    deadline = time.monotonic() + 15
    while confirmed() < written and time.monotonic() < deadline:
        assert not source.read(10).changes
    assert confirmed() >= written > start
    source.close()


OTHER = "CREATE TABLE other (id int PRIMARY KEY, secret text)"


def confirmed_lsn(engine: Engine, slot: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0') FROM pg_replication_slots "
                    "WHERE slot_name = :s"
                ),
                {"s": slot},
            ).scalar_one()
        )


def current_lsn(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")).scalar()
        )


@pytest.mark.parametrize("publication", ["lists both tables", "FOR ALL TABLES"])
def test_a_table_outside_cdc_tables_in_the_publication_produces_no_event(
    pg_url: URL, publication: str
) -> None:
    # Given a publication that sends docs and other, and CDC_TABLES naming docs only
    settings = settings_for_mode(pg_url, "logical", "docs")
    assert settings.slot_name is not None
    engine = database.connect(settings)
    write(engine, DOCS, OTHER)
    database.migrate(engine, settings)
    listing = "FOR ALL TABLES" if publication == "FOR ALL TABLES" else "FOR TABLE docs, other"
    write(engine, f"CREATE PUBLICATION cdc_pub {listing}")
    write(engine, f"SELECT pg_create_logical_replication_slot('{settings.slot_name}', 'pgoutput')")
    source = source_for(settings, engine)
    try:
        # When both change, alone and in one transaction
        write(engine, "INSERT INTO other VALUES (1, 'hunter2')")
        write(engine, "INSERT INTO docs VALUES (1, 'a', 'b', 1)", "UPDATE other SET secret = 'x'")
        write(engine, "DELETE FROM other")
        written = current_lsn(engine)
        worker = Worker(settings, source, recorder := Recorder())
        idle = 0
        while idle < 3:
            idle = 0 if worker.step() else idle + 1
        # Then only docs is published, the others are counted as dropped
        assert [(d["table"], d["op"]) for d in recorder.details] == [("public.docs", "insert")]
        assert "hunter2" not in json.dumps(recorder.details)
        assert worker.stats.ignored >= 3
        source.close()
        # and acknowledged like any change (the slot holds no WAL for them), and no schema
        # version is recorded for them
        assert confirmed_lsn(engine, settings.slot_name) >= written
        with engine.connect() as connection:
            versioned = connection.execute(text("SELECT table_name FROM cdc.table_schemas"))
            assert [name for (name,) in versioned] == ["public.docs"]
    finally:
        source.close()
        drop_slot(engine, settings)


def test_narrowing_cdc_tables_keeps_the_slot_and_its_position(pg_url: URL) -> None:
    # Given docs and other captured, their changes published and acknowledged
    settings, engine, source = logical(pg_url, DOCS + "; " + OTHER, tables="docs,other")
    assert settings.slot_name is not None
    write(engine, "INSERT INTO docs VALUES (1, 'a', 'b', 1)", "INSERT INTO other VALUES (1, 's')")
    assert len(drain(settings, source, Recorder())) == 2
    source.close()
    position = confirmed_lsn(engine, settings.slot_name)
    # When CDC_TABLES is narrowed to docs and `cdc setup` runs again, with the worker stopped
    narrowed = settings.model_copy(update={"tables": ["docs"]})
    write(engine, "INSERT INTO docs VALUES (2, 'c', 'd', 2)", "INSERT INTO other VALUES (2, 's')")
    slots.install(
        engine,
        [read_table(engine, t) for t in narrowed.table_refs],
        settings.slot_name,
        settings.publication_name,
    )
    write(engine, "INSERT INTO docs VALUES (3, 'e', 'f', 3)", "INSERT INTO other VALUES (3, 's')")
    # Then the publication holds docs alone, and the slot is the same, where it was
    with engine.connect() as connection:
        published = connection.execute(
            text("SELECT tablename FROM pg_publication_tables WHERE pubname = 'cdc_pub'")
        ).scalars()
        assert list(published) == ["docs"]
    assert confirmed_lsn(engine, settings.slot_name) == position
    # and the worker goes on from there: nothing again, nothing lost, nothing of other
    source = source_for(narrowed, engine)
    try:
        details = drain(narrowed, source, Recorder())
        assert [(d["table"], d["key"]) for d in details] == [
            ("public.docs", {"id": 2}),
            ("public.docs", {"id": 3}),
        ]
    finally:
        source.close()
        drop_slot(engine, settings)


def test_setup_refuses_to_manage_a_for_all_tables_publication(pg_url: URL) -> None:
    settings = settings_for_mode(pg_url, "logical", "docs")
    engine = database.connect(settings)
    write(engine, DOCS, "CREATE PUBLICATION cdc_pub FOR ALL TABLES")
    with pytest.raises(SetupError, match=r"FOR ALL TABLES.*CDC_PUBLICATION_NAME"):
        slots.install(
            engine,
            [read_table(engine, t) for t in settings.table_refs],
            settings.slot_name or "",
            settings.publication_name,
        )
    assert slots.existing(engine, settings.slot_name or "", "none") == []  # no slot made


def test_a_slot_of_another_database_is_refused_by_setup_and_run(
    pg_url: URL, postgres_server: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given another database of the server that holds a slot under this database's slot name
    settings = settings_for_mode(pg_url, "logical", "docs")
    slot = settings.slot_name
    assert slot is not None
    elsewhere = database_name("test", RUN_ID)
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{elsewhere}"'))
    other = create_engine(postgres_server.set(database=elsewhere), poolclass=NullPool)
    try:
        write(other, f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
        engine = database.connect(settings)
        write(engine, DOCS)
        database.migrate(engine, settings)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
        env.update(
            CDC_DATABASE_URL=pg_url.render_as_string(hide_password=False),
            CDC_TABLES="docs",
            CDC_CAPTURE="logical",
            CDC_SLOT_NAME=slot,
            CDC_BUS="null",
            CDC_LOG_FORMAT="json",
        )
        says = f"replication slot '{slot}' belongs to database '{elsewhere}'"
        # When `cdc setup` and `cdc run` meet it, Then both refuse it, naming the database and
        # the setting, and `cdc run` does not wait for it as if it were unavailable
        for command in ("setup", "run"):
            done = subprocess.run(
                [sys.executable, "-m", "cdc", command],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 1, done.stderr
            assert says in done.stderr and "set CDC_SLOT_NAME" in done.stderr
            assert "unavailable" not in done.stderr
            if command == "setup":  # refused before it changed anything
                assert slots.existing(engine, "none", settings.publication_name) == []
                write(engine, "CREATE PUBLICATION cdc_pub FOR TABLE docs")  # as a DBA would
        # Unset, the name is this database's own, even where the old default (cdc_slot) is
        # another database's; a database that has the old default keeps it
        monkeypatch.setattr(slots, "LEGACY_SLOT_NAME", slot)
        derived = slots.default_slot_name(str(pg_url.database))
        assert slots.slot_name(engine, None) == derived
        kept = f"kept_{pg_url.database}"[:63]
        write(engine, f"SELECT pg_create_logical_replication_slot('{kept}', 'pgoutput')")
        monkeypatch.setattr(slots, "LEGACY_SLOT_NAME", kept)
        assert slots.slot_name(engine, None) == kept
        slots.drop(engine, kept, settings.publication_name)
        engine.dispose()
    finally:
        other.dispose()
        with admin.connect() as connection:
            drop_databases(connection, [elsewhere])
        admin.dispose()


def test_setup_without_a_slot_name_creates_one_named_after_the_database(pg_url: URL) -> None:
    settings = settings_for_mode(pg_url, "logical", "docs")
    engine = database.connect(settings)
    write(engine, DOCS)
    database.migrate(engine, settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(
        CDC_DATABASE_URL=pg_url.render_as_string(hide_password=False),
        CDC_TABLES="docs",
        CDC_CAPTURE="logical",
    )
    slot = f"cdc_{pg_url.database}"  # test database names hold only what slot names may
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cdc", "setup"], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert f"replication slot {slot} is ready" in done.stdout
        assert slots.existing(engine, slot, "none") == [f"replication slot {slot}"]
    finally:
        slots.drop(engine, slot, settings.publication_name)

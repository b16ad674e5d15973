"""Schema changes of a captured table while changes of the old shape still wait in the stream:
every change is converted by the shape its table had when the change was written, and each new
shape is published once as a ``schema`` event that bumps the table's ``schema_version``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from cdc.bus.publishers.file import NullPublisher
from cdc.capture.worker import Worker
from cdc.core.dialects import POSTGRESQL
from cdc.core.settings import Settings
from tests.integration.helpers import (
    changelog_source,
    drop_slot,
    prepared,
    settings_for,
    settings_for_mode,
    source_for,
)

pytestmark = pytest.mark.integration


class Recorder(NullPublisher):
    def __init__(self) -> None:
        super().__init__()
        self.details: list[dict[str, Any]] = []

    def publish(self, entries):  # type: ignore[no-untyped-def]
        self.details.extend(json.loads(e.detail) for e in entries)
        return super().publish(entries)


def drained(settings: Settings, engine: Engine) -> list[dict[str, Any]]:
    """Every event the worker publishes until its source has nothing more for a while."""
    recorder = Recorder()
    worker = Worker(settings, source_for(settings, engine), recorder)
    quiet = 0
    while quiet < (5 if settings.capture == "logical" else 1):
        quiet = 0 if worker.step() else quiet + 1
    worker.source.close()
    drop_slot(engine, settings)
    return recorder.details


# (column type before, value before, DDL, value after, what the events must hold)
CASES = {
    "add": (
        "text",
        "'a'",
        "ALTER TABLE prices ADD COLUMN extra numeric(10,2)",
        "UPDATE prices SET extra = 1.5",
        ("extra", "1.50"),
    ),
    "drop": (
        "text",
        "'a'",
        "ALTER TABLE prices DROP COLUMN note",
        "UPDATE prices SET amount = 'b'",
        ("note", None),
    ),
    "rename": (
        "text",
        "'a'",
        "ALTER TABLE prices RENAME COLUMN note TO remark",
        "UPDATE prices SET amount = 'b'",
        ("remark", "n"),
    ),
    "widen numeric": (
        "numeric(10,2)",
        "1.25",
        "ALTER TABLE prices ALTER COLUMN amount TYPE numeric(30,10)",
        "UPDATE prices SET amount = 12345678901234567890.1234567891",
        ("amount", "12345678901234567890.1234567891"),
    ),
    "change scale": (
        "numeric(10,2)",
        "1.25",
        "ALTER TABLE prices ALTER COLUMN amount TYPE numeric(10,4)",
        "UPDATE prices SET amount = 2.5",
        ("amount", "2.5000"),
    ),
    "int to numeric": (
        "integer",
        "2",
        "ALTER TABLE prices ALTER COLUMN amount TYPE numeric(12,4)",
        "UPDATE prices SET amount = 2.5",
        ("amount", "2.5000"),
    ),
    "text to timestamptz": (
        "text",
        "'2026-01-01 10:00:00+02'",
        "ALTER TABLE prices ALTER COLUMN amount TYPE timestamptz USING amount::timestamptz",
        "UPDATE prices SET amount = '2026-06-01 12:00:00+02'",
        ("amount", "2026-06-01T10:00:00.000000Z"),
    ),
    "text to jsonb": (
        "text",
        """'{"a": 1}'""",
        "ALTER TABLE prices ALTER COLUMN amount TYPE jsonb USING amount::jsonb",
        """UPDATE prices SET amount = '{"b": [1, 2.5]}'""",
        ("amount", {"b": [1, 2.5]}),
    ),
}
# What the change written before the DDL must show, read after it (the old type's conversion)
BEFORE = {
    "text": ("amount", None),
    "numeric(10,2)": ("amount", "1.25"),
    "integer": ("amount", 2),
}


@pytest.mark.parametrize("capture", ["changelog", "logical"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_schema_change_is_followed_at_its_position(pg_url: URL, case: str, capture: str) -> None:
    column_type, first, ddl, write, (column, expected) = CASES[case]
    settings = settings_for_mode(pg_url, capture, "prices")
    engine = prepared(
        settings,
        f"CREATE TABLE prices (id int PRIMARY KEY, amount {column_type}, note text);"
        f"INSERT INTO prices VALUES (1, {first}, 'n')",
    )
    # Given a change of the old shape still waiting, then the DDL, then a change of the new one
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE prices SET amount = {first}, note = 'n'"))
        connection.execute(text(ddl))
        connection.execute(text(write))
    # When the worker reads them all after the DDL
    details = [d for d in drained(settings, engine) if d["op"] != "insert"]
    old, schema, new = details
    # Then the old change keeps the old conversion, version 1
    assert old["op"] == "update" and old["schema_version"] == 1
    if column_type != "text":
        assert old["after"]["amount"] == BEFORE[column_type][1]
    else:
        assert isinstance(old["after"]["amount"], str)
    # and the schema change comes between, with the new shape
    assert schema["op"] == "schema" and schema["schema_version"] == 2
    assert schema["key"] is None and schema["table"] == "public.prices"
    names = [c["name"] for c in schema["after"]["columns"]]
    assert schema["after"]["key"] == ["id"]
    assert [c["name"] for c in schema["before"]["columns"]] == ["id", "amount", "note"]
    # and the first change after it has the new name and the exact value under the contract
    assert new["schema_version"] == 2
    if expected is None:
        assert column not in new["after"] and column not in names
    else:
        assert new["after"][column] == expected and column in names
    assert old["position"] < schema["position"] < new["position"]


def test_the_schema_event_has_its_detail_type_and_names_the_types(pg_url: URL) -> None:
    settings = settings_for(pg_url, "prices")
    engine = prepared(settings, "CREATE TABLE prices (id int PRIMARY KEY, amount numeric(10,2))")
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE prices ALTER COLUMN amount TYPE numeric(30,10)"))
        connection.execute(text("ALTER TABLE prices ADD COLUMN seen timestamptz NOT NULL"))
    recorder = Recorder()
    worker = Worker(settings, changelog_source(settings, engine), recorder)
    entries = worker.entries(worker.source.read(10).changes)
    assert [e.detail_type for e in entries] == ["public.prices.schema"] * 2
    last = json.loads(entries[-1].detail)
    assert last["schema_version"] == 3
    assert last["after"]["columns"] == [
        {"name": "id", "type": "integer", "nullable": False},
        {"name": "amount", "type": "numeric(30,10)", "nullable": True},
        {"name": "seen", "type": "timestamp with time zone", "nullable": False},
    ]
    worker.source.close()


def test_a_ddl_that_changes_no_column_publishes_nothing(pg_url: URL) -> None:
    settings = settings_for(pg_url, "prices")
    engine = prepared(settings, "CREATE TABLE prices (id int PRIMARY KEY, amount int)")
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE prices ALTER COLUMN amount SET DEFAULT 3"))
        connection.execute(text("CREATE INDEX ON prices (amount)"))
        connection.execute(text("INSERT INTO prices (id) VALUES (1)"))
    [event] = drained(settings, engine)
    assert event["op"] == "insert" and event["schema_version"] == 1


def test_a_dropped_table_s_waiting_changes_still_go_out_and_the_rest_flows(pg_url: URL) -> None:
    settings = settings_for(pg_url, "gone,kept")
    engine = prepared(
        settings,
        "CREATE TABLE gone (id int PRIMARY KEY, amount numeric(10,2));"
        "CREATE TABLE kept (id int PRIMARY KEY)",
    )
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO gone VALUES (1, 2.5)"))
        connection.execute(text("DROP TABLE gone"))
        connection.execute(text("INSERT INTO kept VALUES (1), (2)"))
    details = drained(settings, engine)
    assert [(d["table"], d["key"]) for d in details] == [
        ("public.gone", {"id": 1}),
        ("public.kept", {"id": 1}),
        ("public.kept", {"id": 2}),
    ]
    assert details[0]["after"] == {"id": 1, "amount": "2.50"}  # by its recorded shape


def test_a_change_that_cannot_be_converted_is_a_dead_letter_and_the_rest_flows(
    pg_url: URL,
) -> None:
    from cdc.capture import deadletters
    from cdc.core.state import state_tables

    settings = settings_for(pg_url, "gone,kept")
    engine = prepared(
        settings,
        "CREATE TABLE gone (id int PRIMARY KEY); CREATE TABLE kept (id int PRIMARY KEY, b bytea)",
    )
    with engine.begin() as connection:
        # Given a table whose DDL is not tracked (setup without a superuser: no history)
        connection.execute(text("DELETE FROM cdc.table_schemas WHERE table_name = 'public.gone'"))
        connection.execute(text("INSERT INTO gone VALUES (1)"))
        connection.execute(text("DROP TABLE gone"))
        connection.execute(text("INSERT INTO kept VALUES (1)"))
        # and a row image whose bytea value is not hex
        connection.execute(
            text(
                "INSERT INTO cdc.changelog (table_name, op, after) "
                """VALUES ('public.kept', 'insert', '{"id": 3, "b": "\\\\xZZ"}')"""
            )
        )
        connection.execute(text("INSERT INTO kept VALUES (2)"))
    # When the worker drains the change log
    details = drained(settings, engine)
    # Then the rest flows, and both bad changes are dead letters naming their position
    assert [(d["table"], d["key"]) for d in details] == [
        ("public.kept", {"id": 1}),
        ("public.kept", {"id": 2}),
    ]
    letters = deadletters.listing(engine, state_tables(POSTGRESQL, "cdc"))
    assert [letter.table for letter in letters] == ["public.gone", "public.kept"]
    assert "public.gone does not exist" in letters[0].reason
    assert all("at position 000000" in letter.reason for letter in letters)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM cdc.changelog")).scalar() == 0


def test_sqlite_a_renamed_column_shows_its_new_name_in_the_next_event(tmp_path: Path) -> None:
    from cdc.core.settings import load_settings

    settings = load_settings(
        {"CDC_DATABASE_URL": f"sqlite:///{tmp_path / 'legacy.db'}", "CDC_TABLES": "notes"}
    )
    engine = prepared(settings, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO notes VALUES (1, 'a')"))
        # the legacy application renames a column while capture is installed
        connection.execute(text("ALTER TABLE notes RENAME COLUMN body TO text"))
        connection.execute(text("UPDATE notes SET text = 'b'"))
    first, second = drained(settings, engine)
    assert first["after"] == {"id": 1, "body": "a"}
    assert second["before"] == {"id": 1, "text": "a"} and second["after"] == {"id": 1, "text": "b"}


def _replayed(details: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The table a consumer keeps by applying every event in position order."""
    rows: dict[int, dict[str, Any]] = {}
    for event in sorted(details, key=lambda d: d["position"]):
        if event["op"] in ("insert", "update", "read"):
            rows[event["key"]["id"]] = event["after"]
        elif event["op"] == "delete":
            rows.pop(event["key"]["id"], None)
    return rows


def _same(value: Any, other: Any) -> bool:
    from decimal import Decimal

    if value is None or other is None:
        return value is other
    return Decimal(str(value)) == Decimal(str(other))


@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_replaying_every_event_gives_the_table_despite_concurrent_ddl(
    pg_url: URL, capture: str
) -> None:
    import random
    import threading
    import time

    from tests.integration.helpers import raw_engine

    settings = settings_for_mode(pg_url, capture, "items")
    engine = prepared(settings, "CREATE TABLE items (id int PRIMARY KEY, a int NOT NULL)")
    writers = raw_engine(pg_url)
    stop = threading.Event()
    ddl = [
        "ALTER TABLE items ADD COLUMN c numeric(10,2)",
        "ALTER TABLE items ALTER COLUMN a TYPE bigint",
        "ALTER TABLE items ALTER COLUMN c TYPE numeric(20,4)",
        "ALTER TABLE items ALTER COLUMN a TYPE numeric(14,3)",
        "ALTER TABLE items ADD COLUMN d numeric(8,1)",
    ]

    def write(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            key = rng.randrange(50)
            with writers.begin() as connection:
                choice = rng.random()
                if choice < 0.5:
                    connection.execute(
                        text(
                            "INSERT INTO items (id, a) VALUES (:k, :v) "
                            "ON CONFLICT (id) DO UPDATE SET a = items.a + 1"
                        ),
                        {"k": key, "v": rng.randrange(1000)},
                    )
                elif choice < 0.9:
                    connection.execute(text("UPDATE items SET a = a + 1 WHERE id = :k"), {"k": key})
                else:
                    connection.execute(text("DELETE FROM items WHERE id = :k"), {"k": key})

    def alter() -> None:
        for statement in ddl:
            time.sleep(0.3)
            with writers.begin() as connection:
                connection.execute(text(statement))

    recorder = Recorder()
    worker = Worker(settings, source_for(settings, engine), recorder)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(3)]
    # Given writers and DDL running while the worker captures
    for thread in threads:
        thread.start()
    alterer = threading.Thread(target=alter)
    alterer.start()
    try:
        deadline = time.monotonic() + 10
        while alterer.is_alive() and time.monotonic() < deadline:
            worker.step()
    finally:
        stop.set()
        for thread in [*threads, alterer]:
            thread.join()
    quiet = 0
    while quiet < (5 if capture == "logical" else 1):
        quiet = 0 if worker.step() else quiet + 1
    worker.source.close()
    drop_slot(engine, settings)
    # Then every schema change was published once, in order
    details = recorder.details
    assert [d["schema_version"] for d in details if d["op"] == "schema"] == [2, 3, 4, 5, 6]
    # and replaying the row events by position gives the table as it is
    with engine.connect() as connection:
        table = {r.id: r._asdict() for r in connection.execute(text("SELECT * FROM items"))}
    replayed = _replayed(details)
    assert replayed.keys() == table.keys() and table
    for key, row in table.items():
        for column, value in row.items():
            assert _same(replayed[key].get(column), value), (key, column, replayed[key], row)
    # and a's values are exact strings with three decimals once its type is numeric(14,3)
    numeric_era = [
        d for d in details if d["op"] in ("insert", "update") and d["schema_version"] >= 5
    ]
    assert numeric_era and all(d["after"]["a"].endswith(".000") for d in numeric_era)
    assert all(
        isinstance(d["after"]["a"], int)
        for d in details
        if d["schema_version"] < 5 and d["op"] in ("insert", "update")
    )


def test_logical_an_update_beside_an_out_of_line_key_keeps_its_key(pg_url: URL) -> None:
    settings = settings_for_mode(pg_url, "logical", "notes")
    engine = prepared(
        settings,
        # EXTERNAL: out of line without compression once the row passes about 2 kB; a
        # 2.5 kB key still fits the index
        "CREATE TABLE notes (k text PRIMARY KEY, n int);"
        "ALTER TABLE notes ALTER COLUMN k SET STORAGE EXTERNAL",
    )
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO notes SELECT string_agg(md5(random()::text), '') , 0 "
                "FROM generate_series(1, 80)"
            )
        )
        big = connection.execute(text("SELECT k FROM notes")).scalar_one()
        connection.execute(text("UPDATE notes SET n = 1"))  # the key is untouched
        connection.execute(text("UPDATE notes SET k = k || 'x', n = 2"))  # a real key change
    details = drained(settings, engine)
    assert [d["op"] for d in details] == ["insert", "update", "delete", "insert"]
    inserted, updated, deleted, moved = details
    assert inserted["key"] == {"k": big}
    assert updated["key"] == {"k": big} and updated["after"]["n"] == 1
    assert "k" in updated["unchanged"]  # PostgreSQL did not send the unchanged key again
    assert deleted["key"] == {"k": big} and moved["key"] == {"k": big + "x"}
    assert deleted["position"] < moved["position"]


def test_logical_keys_from_a_replica_identity_index(pg_url: URL) -> None:
    settings = settings_for_mode(pg_url, "logical", "accounts")
    engine = prepared(
        settings,
        "CREATE TABLE accounts (code text NOT NULL, n int);"
        "CREATE UNIQUE INDEX accounts_code ON accounts (code);"
        "ALTER TABLE accounts REPLICA IDENTITY USING INDEX accounts_code",
    )
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO accounts VALUES ('a', 1)"))
        connection.execute(text("UPDATE accounts SET n = 2"))
        connection.execute(text("DELETE FROM accounts"))
    details = drained(settings, engine)
    assert [(d["op"], d["key"]) for d in details] == [
        ("insert", {"code": "a"}),
        ("update", {"code": "a"}),
        ("delete", {"code": "a"}),
    ]


def test_logical_a_table_that_lost_its_key_has_key_null_never_empty(pg_url: URL) -> None:
    settings = settings_for_mode(pg_url, "logical", "items")
    engine = prepared(settings, "CREATE TABLE items (id int PRIMARY KEY, n int)")
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE items DROP CONSTRAINT items_pkey"))
        connection.execute(text("ALTER TABLE items REPLICA IDENTITY FULL"))
        connection.execute(text("INSERT INTO items VALUES (1, 1)"))
        connection.execute(text("DELETE FROM items"))
    details = [d for d in drained(settings, engine) if d["op"] != "schema"]
    assert [(d["op"], d["key"]) for d in details] == [("insert", None), ("delete", None)]
    assert details[1]["before"] == {"id": 1, "n": 1}  # the whole old row


@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_a_backfill_after_a_schema_change_carries_the_table_s_version(
    pg_url: URL, capture: str
) -> None:
    import time

    from cdc.app import open_backfiller
    from cdc.capture.backfill import runs
    from cdc.core.state import state_tables

    settings = settings_for_mode(pg_url, capture, "prices")
    engine = prepared(settings, "CREATE TABLE prices (id int PRIMARY KEY, amount int)")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO prices VALUES (1, 2)"))
        connection.execute(text("ALTER TABLE prices ALTER COLUMN amount TYPE numeric(8,2)"))
        connection.execute(text("UPDATE prices SET amount = 3"))
    recorder = Recorder()
    source = source_for(settings, engine)
    worker = Worker(settings, source, recorder, backfill=open_backfiller(settings, engine, source))
    for _ in range(5):
        worker.step()
    info = source.table("public.prices")
    runs.start(engine, state_tables(POSTGRESQL, "cdc"), info, None, 100, None)
    deadline = time.monotonic() + 15
    while not any(d["op"] == "read" for d in recorder.details):
        assert time.monotonic() < deadline
        worker.step()
    source.close()
    drop_slot(engine, settings)
    [read] = [d for d in recorder.details if d["op"] == "read"]
    assert read["schema_version"] == 2 and read["after"] == {"id": 1, "amount": "3.00"}

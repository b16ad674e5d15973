"""Backfill against a real PostgreSQL (both capture modes) and the embedded SQLite: chunks
reconciled with a live stream of concurrent writes, resumption after SIGKILL, the command."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from cdc.app import open_backfiller, open_source
from cdc.bus.publishers.file import FilePublisher, NullPublisher
from cdc.capture.backfill import runs
from cdc.capture.catalog import read_table
from cdc.capture.worker import Worker
from cdc.core.dialects import POSTGRESQL
from cdc.core.settings import Settings
from cdc.core.state import state_tables
from tests.integration.helpers import drop_slot, prepared, raw_engine, settings_for_mode

ROWS = 100_000
TABLE = "public.accounts"
DDL = (
    "CREATE TABLE accounts (region text NOT NULL, id int NOT NULL, balance numeric(12,2), "
    "note text, PRIMARY KEY (region, id));"
    "INSERT INTO accounts SELECT CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g, g * 1.25, "
    f"'row ' || g FROM generate_series(1, {ROWS}) AS g"
)


def bus_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line)["Detail"] for line in path.read_text().splitlines() if line.strip()]


def replay(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The table that the events describe: per key, applied in position order."""
    table: dict[str, dict[str, Any]] = {}
    by_key: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_key.setdefault(json.dumps(event["key"], sort_keys=True), []).append(event)
    for key, group in by_key.items():
        group.sort(key=lambda e: e["position"])
        row: dict[str, Any] | None = None
        for event in group:
            if event["op"] in ("insert", "read"):
                row = dict(event["after"])
            elif event["op"] == "update":
                kept = {c: row[c] for c in event["unchanged"]} if row else {}
                row = {**event["after"], **kept}
            elif event["op"] == "delete":
                row = None
        if row is not None:
            table[key] = row
    return table


def current_table(engine: Engine, settings: Settings) -> dict[str, dict[str, Any]]:
    info = read_table(engine, settings.table_refs[0])
    with engine.connect() as connection:
        images = connection.execute(text("SELECT row_to_json(a)::text FROM accounts a")).scalars()
        rows = [info.convert(info.parse(image)) for image in images]
    return {json.dumps({c: row[c] for c in info.key}, sort_keys=True): row for row in rows}


class Writers:
    """Application traffic while the backfill runs: updates, inserts and deletes in short and
    slow transactions from a few connections, until stopped."""

    def __init__(self, engine: Engine, count: int = 3) -> None:
        self.engine = engine
        self.stop = threading.Event()
        self.transactions = 0
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._work, args=(n,), daemon=True) for n in range(count)
        ]

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _work(self, seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not self.stop.is_set():
                with self.engine.begin() as connection:
                    # Rows in key order: the writers lock them in one order, so they never
                    # deadlock each other (a deadlock would end a writer, not the test).
                    keys = sorted(
                        rng.randint(1, ROWS + ROWS // 10) for _ in range(rng.randint(1, 5))
                    )
                    for n in keys:
                        self._one(connection, rng, n)
                    if rng.random() < 0.1:
                        time.sleep(0.05)  # commits late: its ids are below later ones
                self.transactions += 1
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    @staticmethod
    def _one(connection: Any, rng: random.Random, n: int) -> None:
        region = "eu" if n % 2 == 0 else "us"
        roll = rng.random()
        if roll < 0.6:
            connection.execute(
                text(
                    "UPDATE accounts SET balance = balance + 1, note = :note "
                    "WHERE region = :r AND id = :id"
                ),
                {"r": region, "id": n, "note": f"u{rng.random():.6f}"},
            )
        elif roll < 0.8:
            connection.execute(
                text(
                    "INSERT INTO accounts VALUES (:r, :id, 1, 'new') "
                    "ON CONFLICT (region, id) DO UPDATE SET note = 'again'"
                ),
                {"r": region, "id": n},
            )
        else:
            connection.execute(
                text("DELETE FROM accounts WHERE region = :r AND id = :id"), {"r": region, "id": n}
            )


@pytest.mark.parametrize("mode", ["changelog", "logical"])
def test_a_backfill_beside_live_writes_reproduces_the_table(
    pg_url: URL, tmp_path: Path, mode: str
) -> None:
    bus = tmp_path / "bus.jsonl"
    settings = settings_for_mode(
        pg_url, mode, TABLE, bus="file", bus_file=str(bus), batch_size="500"
    )
    engine = prepared(settings, DDL)
    source = open_source(settings, engine)
    worker = Worker(
        settings,
        source,
        FilePublisher(bus, "default", settings.max_entry_bytes),
        backfill=open_backfiller(settings, engine, source),
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    writers_engine = raw_engine(pg_url)
    tables = state_tables(POSTGRESQL, settings.state_schema)
    try:
        with Writers(writers_engine) as writers:
            time.sleep(0.3)  # the stream is already busy when the backfill starts
            info = read_table(engine, settings.table_refs[0])
            run, resumed = runs.start(engine, tables, info, None, 1000, None)
            assert not resumed and abs((run.rows_total or 0) - ROWS) < ROWS // 10
            deadline = time.monotonic() + 240
            while runs.by_id(engine, tables, [run.id])[0].status == "running":
                assert time.monotonic() < deadline, "backfill did not finish"
                assert thread.is_alive()
                time.sleep(0.2)
            time.sleep(0.3)  # writes keep coming after the last chunk too
        assert not writers.errors, writers.errors
        assert writers.transactions > 50
        expected = current_table(engine, settings)
        # Let the stream catch up with the last writes, then compare.
        deadline = time.monotonic() + 60
        while (described := replay(bus_events(bus))) != expected:
            assert thread.is_alive(), "the worker stopped"
            if time.monotonic() > deadline:
                wrong = [
                    k
                    for k in expected.keys() | described.keys()
                    if expected.get(k) != described.get(k)
                ]
                history = [
                    (e["op"], e["position"], e["txid"], (e["after"] or {}).get("note"))
                    for e in sorted(bus_events(bus), key=lambda e: e["position"])
                    if json.dumps(e["key"], sort_keys=True) == wrong[0]
                ]
                raise AssertionError(
                    f"the events do not describe the table: {len(wrong)} keys differ, e.g. "
                    f"{wrong[0]}: table {expected.get(wrong[0])}, events {described.get(wrong[0])}"
                    f", history {history}"
                )
            time.sleep(0.3)
    finally:
        worker.stop.set()
        thread.join(30)
        source.close()
        writers_engine.dispose()
        drop_slot(engine, settings)
    events = bus_events(bus)
    reads = [e for e in events if e["op"] == "read"]
    done = runs.by_id(engine, tables, [run.id])[0]
    assert done.status == "done" and abs(done.rows_done - ROWS) < ROWS // 10
    # Rows changed by the stream while their chunk was in flight were left to the stream.
    assert 0 < len(reads) <= ROWS
    assert len({e["id"] for e in reads}) == len(reads)
    assert all(e["position"].count(".") == 1 for e in reads)


@pytest.mark.parametrize("mode", ["changelog", "logical"])
def test_a_killed_backfill_resumes_and_resends_with_the_same_ids(
    pg_url: URL, tmp_path: Path, mode: str
) -> None:
    bus = tmp_path / "bus.jsonl"
    settings = settings_for_mode(pg_url, mode, TABLE)
    engine = prepared(settings, DDL.replace(str(ROWS), "20000"))
    env = {
        **os.environ,
        "CDC_DATABASE_URL": pg_url.render_as_string(hide_password=False),
        "CDC_TABLES": TABLE,
        "CDC_BUS": "file",
        "CDC_BUS_FILE": str(bus),
        "CDC_LOG_FORMAT": "json",
        "CDC_POLL_INTERVAL": "0.05",
        "CDC_CAPTURE": mode,
        "CDC_SLOT_NAME": settings.slot_name,
    }
    command = [sys.executable, "-m", "cdc", "backfill", TABLE, "--chunk-size", "1000"]
    # SIGKILL after the 8th batch reached the bus and before its acknowledgement.
    killed = subprocess.run(
        command,
        env={**env, "CDC_FAILPOINT": "kill_after_publish:8"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    tables = state_tables(POSTGRESQL, settings.state_schema)
    [run] = runs.latest(engine, tables)
    assert run.status == "running" and 0 < run.rows_done < 20000
    before = bus_events(bus)
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after {run.rows_done} of 20000 rows" in resumed.stdout
    events = [e for e in bus_events(bus) if e["op"] == "read"]
    ids_by_key: dict[str, set[str]] = {}
    for event in events:
        ids_by_key.setdefault(json.dumps(event["key"], sort_keys=True), set()).add(event["id"])
    assert len(ids_by_key) == 20000  # no row missing
    assert all(len(ids) == 1 for ids in ids_by_key.values())  # a re-sent row keeps its id
    resent = len(events) - 20000
    assert 0 < resent <= 1000  # only the chunk in flight at the kill
    assert len(before) >= 1000  # a chunk or more before the kill
    [finished] = runs.latest(engine, tables)
    assert finished.status == "done" and finished.chunks_done == 20


def run_cdc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_command_refuses_bad_input_clearly(pg_url: URL, tmp_path: Path) -> None:
    settings = settings_for_mode(pg_url, "changelog", TABLE)
    engine = prepared(settings, DDL.replace(str(ROWS), "10") + "; CREATE TABLE loose (n int)")
    env = {
        **os.environ,
        "CDC_DATABASE_URL": pg_url.render_as_string(hide_password=False),
        "CDC_TABLES": TABLE,
        "CDC_BUS": "null",
        "CDC_LOG_FORMAT": "json",
    }
    untracked = run_cdc(env, "backfill", "public.loose")
    assert untracked.returncode == 1 and "not a tracked table" in untracked.stderr
    bad_where = run_cdc(env, "backfill", TABLE, "--where", "no_such_column > 1")
    assert bad_where.returncode == 1 and "no_such_column" in bad_where.stderr
    assert "Traceback" not in bad_where.stderr
    bad_size = run_cdc(env, "backfill", TABLE, "--chunk-size", "0")
    assert bad_size.returncode == 1 and "--chunk-size" in bad_size.stderr
    nothing = run_cdc(env, "backfill")
    assert nothing.returncode == 1 and "--status" in nothing.stderr
    filtered = run_cdc(env, "backfill", TABLE, "--where", "region = 'eu'", "--chunk-size", "2")
    assert filtered.returncode == 0, filtered.stderr
    assert "5 rows to publish" in filtered.stdout
    status = run_cdc(env, "backfill", "--status")
    assert "done" in status.stdout and "5/5" in status.stdout
    # --rate: 10 rows at 10 rows/s in chunks of 2 cannot take less than 0.8 s
    limited = run_cdc(env, "backfill", TABLE, "--chunk-size", "2", "--rate", "10")
    assert limited.returncode == 0, limited.stderr
    [run] = [r for r in runs.latest(engine, state_tables(POSTGRESQL, "cdc")) if r.rows_done == 10]
    assert isinstance(run.started_at, datetime) and isinstance(run.updated_at, datetime)
    assert (run.updated_at - run.started_at).total_seconds() >= 0.8


def test_embedded_backfill_and_change_log_ids_that_never_go_back(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(CDC_LOG_FORMAT="json")
    first = subprocess.run(
        [sys.executable, "-m", "cdc", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    filled = subprocess.run(
        [sys.executable, "-m", "cdc", "backfill", "main.widgets"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert filled.returncode == 0, filled.stderr
    again = subprocess.run(
        [sys.executable, "-m", "cdc", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    subprocess.run(
        [sys.executable, "-m", "cdc", "backfill", "main.widgets"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    events = bus_events(tmp_path / "cdc-events.jsonl")
    reads = [e for e in events if e["op"] == "read"]
    assert reads and all(e["table"] == "main.widgets" for e in reads)
    # The change log was emptied between the runs; its ids (positions) still only grow.
    positions = [e["position"] for e in events]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)


@pytest.mark.parametrize(
    ("key_ddl", "columns"),
    [
        ("at timestamptz, ref uuid, PRIMARY KEY (at, ref)", ["at", "ref"]),
        ("amount numeric(20, 6), code varchar(12), PRIMARY KEY (amount, code)", ["amount", "code"]),
        ('day date, label text COLLATE "C", PRIMARY KEY (label, day)', ["day", "label"]),
    ],
)
def test_keys_of_any_type_that_sorts_are_paged_without_gaps(
    pg_url: URL, tmp_path: Path, key_ddl: str, columns: list[str]
) -> None:
    bus = tmp_path / "bus.jsonl"
    settings = settings_for_mode(
        pg_url, "changelog", "public.things", bus="file", bus_file=str(bus)
    )
    fill = {
        "at": "timestamptz '2024-01-01 00:00:00+00' + (g % 97) * interval '1 hour 3 min'",
        "ref": "md5(g::text)::uuid",
        "amount": "(g % 89) * 1.000001",
        "code": "'c' || (g % 7)",
        "day": "date '2024-01-01' + (g % 53)",
        "label": "'L' || (g % 41)",
    }
    engine = prepared(
        settings,
        f"CREATE TABLE things ({key_ddl}, payload int);"
        f"INSERT INTO things SELECT DISTINCT ON ({', '.join(fill[c] for c in columns)}) "
        f"{', '.join(fill[c] for c in columns)}, g FROM generate_series(1, 3000) AS g",
    )
    with engine.connect() as connection:
        expected = connection.execute(text("SELECT count(*) FROM things")).scalar_one()
    source = open_source(settings, engine)
    worker = Worker(
        settings,
        source,
        FilePublisher(bus, "default", settings.max_entry_bytes),
        backfill=open_backfiller(settings, engine, source),
    )
    tables = state_tables(POSTGRESQL, settings.state_schema)
    run, _ = runs.start(engine, tables, read_table(engine, settings.table_refs[0]), None, 37, None)
    try:
        deadline = time.monotonic() + 60
        while runs.by_id(engine, tables, [run.id])[0].status == "running":
            assert time.monotonic() < deadline
            worker.step()
    finally:
        source.close()
    reads = [e for e in bus_events(bus) if e["op"] == "read"]
    keys = {json.dumps(e["key"], sort_keys=True) for e in reads}
    assert len(reads) == len(keys) == expected  # every row once: no gap, no repeat


def test_a_chunk_waits_for_a_writer_that_took_lower_ids_and_commits_late(
    pg_url: URL, tmp_path: Path
) -> None:
    """Change-log ids are taken at write time: a transaction open across the chunk's read and
    watermark holds ids below the watermark. Its update must come out after the chunk's copy
    of the row in position order, or the old copy would win; and the stream goes on meanwhile."""
    bus = tmp_path / "bus.jsonl"
    settings = settings_for_mode(pg_url, "changelog", TABLE, bus="file", bus_file=str(bus))
    engine = prepared(settings, DDL.replace(str(ROWS), "50"))
    source = open_source(settings, engine)
    worker = Worker(
        settings,
        source,
        FilePublisher(bus, "default", settings.max_entry_bytes),
        backfill=open_backfiller(settings, engine, source),
    )
    tables = state_tables(POSTGRESQL, settings.state_schema)
    writers = raw_engine(pg_url)
    late = writers.connect()
    try:
        run, _ = runs.start(
            engine, tables, read_table(engine, settings.table_refs[0]), None, 100, None
        )
        # The late writer takes the newest xid: no transaction completes after it before the
        # watermark, so the watermark's snapshot has it past its xmax, not in its running list.
        late.begin()
        late.execute(text("UPDATE accounts SET note = 'late' WHERE region = 'eu' AND id = 2"))
        for _ in range(5):
            worker.step()  # the chunk is read (without the late update) and waits
        assert worker.backfill is not None and worker.backfill.pending is not None
        assert not worker.backfill.pending.ready
        with writers.begin() as other:  # the stream is not held up
            other.execute(text("UPDATE accounts SET note = 'other' WHERE region = 'us' AND id = 1"))
        for _ in range(5):
            worker.step()
        assert any(e["after"]["note"] == "other" for e in bus_events(bus) if e["op"] == "update")
        assert not [e for e in bus_events(bus) if e["op"] == "read"]
        late.commit()
        deadline = time.monotonic() + 30
        while runs.by_id(engine, tables, [run.id])[0].status == "running":
            assert time.monotonic() < deadline
            worker.step()
        worker.step()
    finally:
        late.close()
        writers.dispose()
        source.close()
    assert replay(bus_events(bus)) == current_table(engine, settings)
    assert replay(bus_events(bus))['{"id": 2, "region": "eu"}']["note"] == "late"


@pytest.mark.parametrize("mode", ["changelog", "logical"])
def test_the_first_chunk_starts_within_a_second_on_an_idle_stream(pg_url: URL, mode: str) -> None:
    # Given a worker on an idle stream, polling every 10 s, that has just read its source
    settings = settings_for_mode(pg_url, mode, TABLE, poll_interval="10")
    engine = prepared(settings, DDL.replace(str(ROWS), "1001"))
    source = open_source(settings, engine)
    worker = Worker(
        settings, source, NullPublisher(), backfill=open_backfiller(settings, engine, source)
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    tables = state_tables(POSTGRESQL, settings.state_schema)
    try:
        deadline = time.monotonic() + 30
        while not worker.stats.last_read_at:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.01)
        last = worker.stats.last_read_at
        while worker.stats.last_read_at == last:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.001)
        # When a backfill is registered (as `cdc backfill` does beside `cdc run`)
        info = read_table(engine, settings.table_refs[0])
        run, _ = runs.start(engine, tables, info, None, 1000, None)
        registered = time.monotonic()
        # Then its first chunk is published at once (about 0.15 s measured), not after the idle
        # poll (10 s): the bound leaves room for a loaded machine
        while runs.by_id(engine, tables, [run.id])[0].rows_done == 0:
            waited = time.monotonic() - registered
            assert waited < 3.0, f"no chunk after {waited:.1f}s"
            time.sleep(0.02)
    finally:
        worker.stop.set()
        thread.join(30)
        source.close()
        drop_slot(engine, settings)

"""Test runs side by side on one server leave each other alone: `scripts/prepare-postgres
--clean-stale` drops the databases (and replication slots) of runs whose process is gone, and
nothing of a run still going, nor of another machine's runs, nor its sessions."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from tests.databases import database_name, drop_databases, host_tag, new_run_id

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("psql") is None, reason="scripts/prepare-postgres needs psql"),
]
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prepare-postgres"


@pytest.fixture
def other_run() -> Iterator[int]:
    """The pid of another test run that is still going (a process that sleeps)."""
    process = subprocess.Popen(["sleep", "120"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def dead_run() -> int:
    """The pid of a test run that was killed (a process that has exited)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_clean_stale_drops_dead_runs_databases_only(
    postgres_server: URL, pg_url: URL, other_run: int, dead_run: int
) -> None:
    elsewhere = "0" * 8 if host_tag() != "0" * 8 else "1" * 8
    live = database_name("test", new_run_id(other_run))
    live_bench = database_name("bench", new_run_id(other_run))
    dead = database_name("test", new_run_id(dead_run))
    dead_bench = database_name("bench", new_run_id(dead_run))
    # the same dead pid, but in another host's (or container's) pid space: not ours to judge
    other_host = f"cdc_test_{elsewhere}_{dead_run}_{secrets.token_hex(3)}_{secrets.token_hex(4)}"
    created = [live, live_bench, dead, dead_bench, other_host]
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    live_engine = create_engine(postgres_server.set(database=live), poolclass=NullPool)
    dead_engine = create_engine(
        postgres_server.set(database=dead), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    try:
        with admin.connect() as connection:
            for name in created:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        # What a killed run leaves that costs most: a slot that retains WAL
        slot = f"{dead}_slot"
        with dead_engine.connect() as connection:
            connection.execute(
                text("SELECT pg_create_logical_replication_slot(:s, 'pgoutput')"), {"s": slot}
            )
        dead_engine.dispose()
        with live_engine.connect() as live_session:
            server = postgres_server.set(drivername="postgresql")
            result = subprocess.run(
                [str(SCRIPT), "--clean-stale", server.render_as_string(hide_password=False)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            try:
                live_session_ended = live_session.execute(text("SELECT 1")).scalar() != 1
            except OperationalError:
                live_session_ended = True
        with admin.connect() as connection:
            names = {n for (n,) in connection.execute(text("SELECT datname FROM pg_database"))}
            slots = {
                s for (s,) in connection.execute(text("SELECT slot_name FROM pg_replication_slots"))
            }
        assert result.returncode == 0, result.stderr
        assert {live, live_bench, other_host, pg_url.database} <= names
        assert not {dead, dead_bench} & names
        assert slot not in slots
        assert f"dropped {dead} " in result.stdout
        assert not live_session_ended, "the other run's session was ended"
    finally:
        live_engine.dispose()
        dead_engine.dispose()
        with admin.connect() as connection:
            drop_databases(connection, created)
        admin.dispose()

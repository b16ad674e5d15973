"""Two workers on one source: one captures, the other waits; killed by SIGKILL, the leader is
replaced by the standby within seconds, and nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from tests.integration.helpers import prepared, raw_engine, settings_for_mode

pytestmark = pytest.mark.integration
CHANGES = 2_000


def published(path: Path) -> list[dict[str, object]]:
    """The events of a bus file a live worker may be writing: a last line without its newline
    is still being written, and is left for the next reading."""
    if not path.exists():
        return []
    complete = path.read_text().rpartition("\n")[0]
    return [json.loads(line)["Detail"] for line in complete.splitlines() if line]


@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_the_standby_takes_over_from_a_killed_leader(
    pg_url: URL, tmp_path: Path, capture: str, fault_summary: list[str]
) -> None:
    settings = settings_for_mode(pg_url, capture, "items")
    prepared(settings, "CREATE TABLE items (id int PRIMARY KEY)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(
        {
            "CDC_DATABASE_URL": settings.url.render_as_string(hide_password=False),
            "CDC_TABLES": "items",
            "CDC_CAPTURE": capture,
            "CDC_SLOT_NAME": settings.slot_name,
            "CDC_BUS": "file",
            "CDC_POLL_INTERVAL": "0.05",
            "CDC_BATCH_SIZE": "50",
        }
    )
    buses = [tmp_path / "leader.jsonl", tmp_path / "standby.jsonl"]
    leader = subprocess.Popen(
        [sys.executable, "-m", "cdc", "run"], env={**env, "CDC_BUS_FILE": str(buses[0])}
    )
    time.sleep(1.5)  # the leader holds the lease before the standby starts
    standby = subprocess.Popen(
        [sys.executable, "-m", "cdc", "run"], env={**env, "CDC_BUS_FILE": str(buses[1])}
    )
    legacy = raw_engine(pg_url)
    done = threading.Event()

    def write() -> None:
        with legacy.connect() as connection:
            for key in range(CHANGES):
                connection.execute(text("INSERT INTO items VALUES (:k)"), {"k": key})
                connection.commit()
                time.sleep(0.002)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while len(published(buses[0])) < CHANGES // 4:
            time.sleep(0.05)
        assert published(buses[1]) == []  # the standby only waits
        leader.send_signal(signal.SIGKILL)
        leader.wait(10)
        killed_at = time.monotonic()
        while not published(buses[1]):
            assert time.monotonic() - killed_at < 10, "the standby did not take over in 10 s"
            time.sleep(0.02)
        takeover = time.monotonic() - killed_at
        writer.join(120)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            keys = {d["key"]["id"] for bus in buses for d in published(bus)}  # type: ignore[index]
            if len(keys) >= CHANGES:
                break
            time.sleep(0.1)
    finally:
        for process in (leader, standby):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
        legacy.dispose()
    assert keys == set(range(CHANGES))
    total = sum(len(published(bus)) for bus in buses)
    fault_summary.append(
        f"failover, {capture} mode: leader killed, standby took over in "
        f"{takeover:.2f}s; changes={CHANGES} published={total} lost=0 "
        f"duplicates={total - CHANGES}"
    )


def test_a_backfill_continues_on_the_standby(
    pg_url: URL, tmp_path: Path, fault_summary: list[str]
) -> None:
    """The lease covers backfills too: the leader runs the chunks; killed, the standby resumes
    the backfill after the last chunk the bus accepted, and every row is published."""
    rows = 30_000
    settings = settings_for_mode(pg_url, "changelog", "items")
    prepared(
        settings,
        "CREATE TABLE items (id int PRIMARY KEY, note text);"
        f"INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, {rows}) AS g",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(
        {
            "CDC_DATABASE_URL": settings.url.render_as_string(hide_password=False),
            "CDC_TABLES": "items",
            "CDC_BUS": "file",
            "CDC_POLL_INTERVAL": "0.05",
        }
    )
    buses = [tmp_path / "leader.jsonl", tmp_path / "standby.jsonl"]
    leader = subprocess.Popen(
        [sys.executable, "-m", "cdc", "run"], env={**env, "CDC_BUS_FILE": str(buses[0])}
    )
    time.sleep(1.5)
    standby = subprocess.Popen(
        [sys.executable, "-m", "cdc", "run"], env={**env, "CDC_BUS_FILE": str(buses[1])}
    )
    try:
        # Slow enough (2,000 rows/s) that the kill lands in the middle.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cdc",
                "backfill",
                "items",
                "--detach",
                "--chunk-size",
                "500",
                "--rate",
                "2000",
            ],
            env={**env, "CDC_BUS_FILE": str(tmp_path / "unused.jsonl")},
            check=True,
            capture_output=True,
            timeout=60,
        )
        while len(published(buses[0])) < rows // 4:
            time.sleep(0.05)
        leader.send_signal(signal.SIGKILL)
        leader.wait(10)
        killed_at = time.monotonic()
        deadline = killed_at + 60
        while True:
            keys = {d["key"]["id"] for bus in buses for d in published(bus)}  # type: ignore[index]
            if len(keys) >= rows:
                break
            assert time.monotonic() < deadline, f"{len(keys)} of {rows} rows published"
            time.sleep(0.1)
        resumed_in = min((time.monotonic() - killed_at), 60.0)
    finally:
        for process in (leader, standby):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
    assert keys == set(range(1, rows + 1))
    standby_rows = {d["key"]["id"] for d in published(buses[1])}  # type: ignore[index]
    assert standby_rows and min(standby_rows) > 1  # resumed, not started over
    total = sum(len(published(bus)) for bus in buses)
    fault_summary.append(
        f"backfill failover: leader killed mid-backfill, standby finished it "
        f"({resumed_in:.1f}s); rows={rows} published={total} lost=0 "
        f"re-sent={total - rows}"
    )

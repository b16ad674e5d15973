"""The worker killed with SIGKILL at random moments while changes stream in: afterwards every
change was published at least once, duplicates carry the same id, and per key the positions
order the changes as they were committed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from tests.integration.helpers import prepared, raw_engine, settings_for_mode

pytestmark = pytest.mark.integration

KEYS = 100
CHANGES = 10_000
KILLS = 10


def read_bus(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line)["Detail"] for line in path.read_text().splitlines() if line]


@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_sigkill_storm_loses_nothing(
    pg_url: URL, tmp_path: Path, capture: str, fault_summary: list[str]
) -> None:
    settings = settings_for_mode(pg_url, capture, "accounts")
    engine = prepared(settings, "CREATE TABLE accounts (id int PRIMARY KEY, version int NOT NULL)")
    bus = tmp_path / "bus.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(
        {
            "CDC_DATABASE_URL": settings.url.render_as_string(hide_password=False),
            "CDC_TABLES": "accounts",
            "CDC_CAPTURE": capture,
            "CDC_SLOT_NAME": settings.slot_name,
            "CDC_BUS": "file",
            "CDC_BUS_FILE": str(bus),
            "CDC_BATCH_SIZE": "100",
            "CDC_POLL_INTERVAL": "0.05",
            "CDC_LOG_LEVEL": "WARNING",
        }
    )

    # Given: a writer committing CHANGES single-row changes (inserts, then version bumps)
    legacy = raw_engine(pg_url)
    written = threading.Event()

    def write() -> None:
        with legacy.connect() as connection:
            for n in range(CHANGES):
                key = n % KEYS
                if n < KEYS:
                    connection.execute(text("INSERT INTO accounts VALUES (:k, 1)"), {"k": key})
                else:
                    connection.execute(
                        text("UPDATE accounts SET version = version + 1 WHERE id = :k"), {"k": key}
                    )
                connection.commit()
        written.set()

    # When: the worker is killed with SIGKILL at random moments and started again each time
    rng = random.Random(20261128)
    writer = threading.Thread(target=write)
    writer.start()
    kills = 0
    worker = subprocess.Popen([sys.executable, "-m", "cdc", "run"], env=env)
    try:
        while kills < KILLS or not written.is_set():
            time.sleep(rng.uniform(0.2, 1.2))
            if kills < KILLS:
                worker.send_signal(signal.SIGKILL)
                worker.wait(10)
                kills += 1
                worker = subprocess.Popen([sys.executable, "-m", "cdc", "run"], env=env)
        writer.join()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            versions = {
                (d["key"]["id"], d["after"]["version"]) for d in read_bus(bus) if d["after"]
            }
            if len(versions) >= CHANGES:
                break
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        legacy.dispose()

    # Then: every change was published at least once ...
    details = read_bus(bus)
    published = {(d["key"]["id"], d["after"]["version"]) for d in details}
    expected = {(key, version) for key in range(KEYS) for version in range(1, CHANGES // KEYS + 1)}
    assert published == expected
    # ... a change published twice carries the same id and the same content ...
    by_id: dict[str, str] = {}
    for detail in details:
        rendered = json.dumps(detail, sort_keys=True)
        assert by_id.setdefault(detail["id"], rendered) == rendered
    ids_by_change: dict[tuple[int, int], set[str]] = {}
    for detail in details:
        ids_by_change.setdefault((detail["key"]["id"], detail["after"]["version"]), set()).add(
            detail["id"]
        )
    assert all(len(ids) == 1 for ids in ids_by_change.values())
    # ... and per key, position order is commit order
    for key in range(KEYS):
        ordered = sorted(
            {(d["position"], d["after"]["version"]) for d in details if d["key"]["id"] == key}
        )
        assert [v for _, v in ordered] == list(range(1, CHANGES // KEYS + 1)), key
    duplicates = len(details) - len(published)
    fault_summary.append(
        f"SIGKILL storm, {capture} mode: kills={kills} changes={CHANGES} "
        f"published={len(details)} lost=0 duplicates={duplicates}"
    )
    if capture == "changelog":
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM cdc.changelog")).scalar() == 0

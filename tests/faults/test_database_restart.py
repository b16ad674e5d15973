"""PostgreSQL restarted in the middle of a stream: the worker reconnects and resumes, and
nothing is lost. Restarts the machine's server (as scripts/prepare-postgres does), so it runs
only against a local server that pg_ctlcluster controls."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from cdc.bus.publishers.file import FilePublisher
from cdc.capture.worker import Worker
from tests.integration.helpers import prepared, raw_engine, settings_for_mode, source_for

pytestmark = pytest.mark.integration
CHANGES = 1_000


def restart_postgres() -> None:
    version = next(iter(Path("/etc/postgresql").iterdir())).name
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        timeout=120,
        capture_output=True,
    )


@pytest.mark.skipif(
    shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").exists(),
    reason="needs a local PostgreSQL that pg_ctlcluster controls",
)
@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_a_database_restart_mid_stream_loses_nothing(
    pg_url: URL, tmp_path: Path, capture: str, fault_summary: list[str]
) -> None:
    if pg_url.host not in ("127.0.0.1", "localhost"):
        pytest.skip("restarts only a local server")
    settings = settings_for_mode(pg_url, capture, "accounts", batch_size="50")
    engine = prepared(settings, "CREATE TABLE accounts (id int PRIMARY KEY, version int NOT NULL)")
    bus = tmp_path / "bus.jsonl"
    publisher = FilePublisher(bus, "default")
    worker = Worker(settings, source_for(settings, engine), publisher)
    legacy = raw_engine(pg_url)
    committed: list[int] = []

    def write() -> None:
        n = 0
        while n < CHANGES:
            try:
                with legacy.begin() as connection:
                    connection.execute(text("INSERT INTO accounts VALUES (:k, 1)"), {"k": n})
                committed.append(n)
                n += 1
            except OperationalError:
                time.sleep(0.2)  # the server is restarting; this row was not committed

    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    writer = threading.Thread(target=write)
    writer.start()
    while len(committed) < CHANGES // 3:
        time.sleep(0.05)
    restart_postgres()
    writer.join(120)
    deadline = time.monotonic() + 60
    keys: set[int] = set()
    while time.monotonic() < deadline and len(keys) < CHANGES:
        keys = {json.loads(line)["Detail"]["key"]["id"] for line in bus.read_text().splitlines()}
        time.sleep(0.2)
    worker.stop.set()
    thread.join(30)
    worker.source.close()
    publisher.close()
    legacy.dispose()
    assert keys == set(committed) == set(range(CHANGES))
    published = len(bus.read_text().splitlines())
    fault_summary.append(
        f"PostgreSQL restart, {capture} mode: restarts=1 changes={CHANGES} "
        f"published={published} lost=0 duplicates={published - CHANGES} "
        f"db retries={worker.stats.db_retries}"
    )

"""Crash and bus-fault tests: nothing lost, duplicates carry the same id."""

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

import boto3
import pytest
from botocore.exceptions import ClientError
from sqlalchemy import text
from sqlalchemy.engine import URL

from cdc.bus.publishers.eventbridge import EventBridgePublisher
from cdc.capture import deadletters
from cdc.capture.worker import Worker
from cdc.cli import main as cdc_main
from cdc.core.dialects import POSTGRESQL
from cdc.core.settings import Settings
from cdc.core.state import state_tables
from tests.integration.helpers import (
    drop_slot,
    prepared,
    raw_engine,
    running,
    settings_for_mode,
    source_for,
    wire_bus,
)

pytestmark = pytest.mark.integration

ITEMS = "CREATE TABLE items (id int PRIMARY KEY, body text NOT NULL)"


def cdc_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(
        {
            "CDC_DATABASE_URL": settings.url.render_as_string(hide_password=False),
            "CDC_TABLES": "items",
            "CDC_POLL_INTERVAL": "0.05",
            "CDC_CAPTURE": settings.capture,
            "CDC_SLOT_NAME": settings.slot_name,
        }
    )
    env.update({f"CDC_{k.upper()}": v for k, v in extra.items()})
    return env


def read_bus(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_sigkill_between_publish_and_ack_republishes_same_ids(
    pg_url: URL, tmp_path: Path, capture: str
) -> None:
    # Given: 100 committed changes and a worker that dies by SIGKILL after its third batch
    # was published and before that batch was acknowledged
    settings = settings_for_mode(pg_url, capture, "items")
    engine = prepared(settings, ITEMS)
    for key in range(100):
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO items VALUES (:k, 'x')"), {"k": key})
    bus = tmp_path / "bus.jsonl"
    env = cdc_env(settings, bus="file", bus_file=str(bus), batch_size="10")
    crashed = subprocess.run(
        [sys.executable, "-m", "cdc", "run"],
        env={**env, "CDC_FAILPOINT": "kill_after_publish:3"},
        timeout=60,
    )
    assert crashed.returncode == -signal.SIGKILL
    first_run = [entry["Detail"]["id"] for entry in read_bus(bus)]
    if capture == "changelog":
        assert len(first_run) == 30  # three batches of ten published, two acknowledged

    # When: the worker runs again until every key was published, then gets SIGTERM
    worker = subprocess.Popen([sys.executable, "-m", "cdc", "run"], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        len({e["Detail"]["key"]["id"] for e in read_bus(bus)}) < 100
    ):
        time.sleep(0.1)
    time.sleep(0.3)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0

    # Then: all 100 changes were published, each key under one id ...
    details = [entry["Detail"] for entry in read_bus(bus)]
    assert {d["key"]["id"] for d in details} == set(range(100))
    ids_by_key: dict[int, set[str]] = {}
    for detail in details:
        ids_by_key.setdefault(detail["key"]["id"], set()).add(detail["id"])
    assert all(len(ids) == 1 for ids in ids_by_key.values())
    # ... and the unacknowledged third batch again, after the restart, with the same ids
    again = [d["id"] for d in details[len(first_run) :]]
    assert first_run[-1] in again
    if capture == "changelog":
        assert len(details) == 110 and again[:10] == first_run[20:30]
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM cdc.changelog")).scalar() == 0
    drop_slot(engine, settings)


class FaultyEvents:
    """A boto3 events client in front of moto that throttles 30% of calls and fails 10% of
    the entries of the others (those entries are not sent; the response says so)."""

    def __init__(self, real: Any, seed: int) -> None:
        self.real = real
        self.rng = random.Random(seed)
        self.throttled = 0
        self.failed_entries = 0

    def put_events(self, *, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        if self.rng.random() < 0.3:
            self.throttled += 1
            raise ClientError(
                {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "PutEvents"
            )
        failing = [self.rng.random() < 0.1 for _ in Entries]
        passing = [e for e, f in zip(Entries, failing, strict=True) if not f]
        reply = self.real.put_events(Entries=passing) if passing else {"Entries": []}
        accepted = iter(reply["Entries"])
        results = []
        for fail in failing:
            if fail:
                self.failed_entries += 1
                results.append({"ErrorCode": "InternalFailure", "ErrorMessage": "injected"})
            else:
                results.append(next(accepted))
        return {"FailedEntryCount": sum(failing), "Entries": results}


@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_bus_faults_lose_nothing_and_oversized_goes_to_dead_letters(
    pg_url: URL, moto_endpoint: str, capsys: pytest.CaptureFixture[str], capture: str
) -> None:
    # Given: a bus that throttles and fails entries, and one row too large for an entry
    settings = settings_for_mode(pg_url, capture, "items", batch_size="25", max_entry_bytes="20000")
    engine = prepared(settings, ITEMS)
    wiring = wire_bus(settings.event_source)
    faulty = FaultyEvents(boto3.client("events"), seed=7)
    stop = threading.Event()
    publisher = EventBridgePublisher(
        faulty,
        wiring.bus_name,
        settings.max_entry_bytes,
        stop,
        initial_backoff=0.001,
        max_backoff=0.01,
    )
    worker = Worker(settings, source_for(settings, engine), publisher, stop)
    legacy = raw_engine(pg_url)

    # When: 150 rows are written, the 50th of them 30 kB large
    with running(worker.run) as thread:
        for key in range(150):
            with legacy.begin() as connection:
                body = "y" * 30_000 if key == 49 else f"row {key}"
                connection.execute(text("INSERT INTO items VALUES (:k, :b)"), {"k": key, "b": body})
        wiring.drain_until(lambda got: len(got) >= 149, timeout=90)
        time.sleep(0.3)
        wiring.drain_once()
        stop.set()
        thread.join(10)

    # Then: every other change arrived exactly once, although faults were injected
    keys = sorted(m["detail"]["key"]["id"] for m in wiring.received)
    assert keys == [k for k in range(150) if k != 49]
    assert faulty.throttled > 0 and faulty.failed_entries > 0
    # ... and the oversized one is a dead letter with its reason, listed by the CLI
    tables = state_tables(POSTGRESQL)
    letters = deadletters.listing(engine, tables)
    assert len(letters) == 1
    assert "over the maximum of 20000" in letters[0].reason
    assert json.loads(letters[0].entry.detail)["key"] == {"id": 49}
    env = cdc_env(settings, bus="eventbridge", event_bus_name=wiring.bus_name)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        assert cdc_main(["dead-letters"]) == 0
        assert "over the maximum" in capsys.readouterr().out
        # ... and once the limit allows it, a resend publishes it and clears it
        patch.setenv("CDC_MAX_ENTRY_BYTES", "262144")
        assert cdc_main(["dead-letters", "--resend"]) == 0
    assert deadletters.count(engine, tables) == 0
    wiring.drain_until(lambda got: len(got) >= 150, timeout=30)
    assert wiring.received[-1]["detail"]["key"] == {"id": 49}

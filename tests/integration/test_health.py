"""A running worker's /metrics and /readyz move as changes flow."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from tests.conftest import free_port
from tests.integration.helpers import prepared, settings_for

pytestmark = pytest.mark.integration


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric(body: str, name: str) -> float:
    match = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", body, flags=re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_slot_metrics_in_logical_mode(pg_url: URL, tmp_path: Path) -> None:
    from cdc.bus.publishers.file import NullPublisher
    from cdc.capture.health import WorkerCollector
    from cdc.capture.worker import Worker
    from tests.integration.helpers import drop_slot, settings_for_mode, source_for

    settings = settings_for_mode(pg_url, "logical", "items")
    engine = prepared(settings, "CREATE TABLE items (id int PRIMARY KEY)")
    source = source_for(settings, engine)
    try:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO items SELECT generate_series(1, 100)"))
        families = {
            f.name: f for f in WorkerCollector(Worker(settings, source, NullPublisher())).collect()
        }
        [sample] = families["cdc_slot_retained_wal_bytes"].samples
        assert sample.labels == {"slot": settings.slot_name} and sample.value > 0
        assert families["cdc_slot_lag_bytes"].samples[0].value > 0
        # max_slot_wal_keep_size in bytes (-1: unlimited, this server's default)
        with engine.connect() as connection:
            keep = connection.execute(
                text("SELECT pg_size_bytes(current_setting('max_slot_wal_keep_size'))")
            ).scalar_one()
        [sample] = families["cdc_slot_wal_keep_size_bytes"].samples
        assert sample.labels == {"slot": settings.slot_name} and sample.value == keep
    finally:
        source.close()
        drop_slot(engine, settings)


def test_metrics_and_readiness_of_a_running_worker(pg_url: URL, tmp_path: Path) -> None:
    settings = settings_for(pg_url, "items")
    engine = prepared(settings, "CREATE TABLE items (id int PRIMARY KEY)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(
        {
            "CDC_DATABASE_URL": settings.url.render_as_string(hide_password=False),
            "CDC_TABLES": "items",
            "CDC_BUS": "file",
            "CDC_BUS_FILE": str(tmp_path / "b.jsonl"),
            "CDC_POLL_INTERVAL": "0.05",
            "CDC_HEALTH_PORT": str(port),
        }
    )
    worker = subprocess.Popen([sys.executable, "-m", "cdc", "run"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = get(f"{base}/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline, "the health endpoint never answered"
                time.sleep(0.1)
        assert status == 200
        deadline = time.monotonic() + 10
        while get(f"{base}/readyz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        before = metric(get(f"{base}/metrics")[1], "cdc_events_published_total")
        with engine.begin() as connection:
            for key in range(25):
                connection.execute(text("INSERT INTO items VALUES (:k)"), {"k": key})
        deadline = time.monotonic() + 20
        while metric(get(f"{base}/metrics")[1], "cdc_events_published_total") < before + 25:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        body = get(f"{base}/metrics")[1]
        assert metric(body, "cdc_changes_captured_total") >= 25
        assert 0 <= metric(body, "cdc_lag_seconds") < 60
        assert metric(body, "cdc_dead_letters_total") == 0
        assert metric(body, "cdc_pending_changes") == 0
        assert str(pg_url.database) not in body and "postgresql://" not in body  # no DSN
        # A backfill registered meanwhile is done by this worker, and counted
        fill = subprocess.run(
            [sys.executable, "-m", "cdc", "backfill", "items", "--detach"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert fill.returncode == 0, fill.stderr
        deadline = time.monotonic() + 20
        while metric(get(f"{base}/metrics")[1], "cdc_backfill_rows_published_total") < 25:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


def test_a_table_not_captured_with_missing_tables_warn_leaves_the_worker_not_ready(
    pg_url: URL, tmp_path: Path
) -> None:
    # Given items set up for capture and later, created after `cdc setup`, both in CDC_TABLES
    settings = settings_for(pg_url, "items")
    engine = prepared(
        settings, "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE later (id int PRIMARY KEY)"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(
        {
            "CDC_DATABASE_URL": settings.url.render_as_string(hide_password=False),
            "CDC_TABLES": "items,later",
            "CDC_MISSING_TABLES": "warn",
            "CDC_BUS": "file",
            "CDC_BUS_FILE": str(tmp_path / "b.jsonl"),
            "CDC_POLL_INTERVAL": "0.05",
            "CDC_HEALTH_PORT": str(port),
        }
    )
    log = tmp_path / "worker.log"
    with log.open("w") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "cdc", "run"], env=env, stderr=output, stdout=output
        )
    base = f"http://127.0.0.1:{port}"
    try:
        # When the worker runs, Then items is captured meanwhile
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO items VALUES (1)"))
        deadline = time.monotonic() + 30
        while not (tmp_path / "b.jsonl").exists() or not (tmp_path / "b.jsonl").read_text():
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.1)
        # but the worker says what is missing, and is not ready
        status, _ = get(f"{base}/readyz")
        assert status == 503
        assert metric(get(f"{base}/metrics")[1], "cdc_uncaptured_tables") == 1
        assert "public.later has no capture triggers (run `cdc setup`)" in log.read_text()
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0

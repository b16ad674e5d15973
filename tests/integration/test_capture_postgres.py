"""Change-log capture from PostgreSQL to EventBridge (moto's server), end to end."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from cdc.bus.publishers.eventbridge import EventBridgePublisher
from cdc.bus.publishers.file import NullPublisher
from cdc.capture.worker import Worker
from tests.integration.helpers import (
    by_key,
    drop_slot,
    prepared,
    raw_engine,
    running,
    settings_for_mode,
    source_for,
    wire_bus,
)

pytestmark = pytest.mark.integration

ACCOUNTS = "CREATE TABLE accounts (id int PRIMARY KEY, version int NOT NULL, note text)"


@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_concurrent_transactions_arrive_complete_and_in_key_order(
    pg_url: URL, moto_endpoint: str, capture: str
) -> None:
    # Given: a capture worker publishing to an EventBridge bus whose rule feeds an SQS queue
    settings = settings_for_mode(pg_url, capture, "accounts", batch_size="40")
    engine = prepared(settings, ACCOUNTS)
    wiring = wire_bus(settings.event_source)
    stop = threading.Event()
    publisher = EventBridgePublisher.from_environment(wiring.bus_name, stop=stop)
    worker = Worker(settings, source_for(settings, engine), publisher, stop)
    legacy = raw_engine(pg_url)
    keys = list(range(1, 41))
    with legacy.begin() as connection:
        for key in keys:
            connection.execute(text("INSERT INTO accounts VALUES (:k, 1, 'new')"), {"k": key})
    expected = len(keys)

    long_started, others_done = threading.Event(), threading.Event()

    def long_transaction() -> None:
        # Takes a change-log id before everything below, commits after all of it.
        with legacy.begin() as connection:
            connection.execute(text("INSERT INTO accounts VALUES (1000, 1, 'long')"))
            long_started.set()
            others_done.wait(60)
            time.sleep(0.3)  # let the worker publish and delete ids above this one first

    counts: list[int] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        done = 0
        for _ in range(60):
            with legacy.begin() as connection:
                for key in sorted(rng.sample(keys, rng.randint(1, 3))):
                    connection.execute(
                        text("UPDATE accounts SET version = version + 1, note = :n WHERE id = :k"),
                        {"k": key, "n": f"w{seed}"},
                    )
                    done += 1
        counts.append(done)

    # When: the worker runs while eight writers and one long transaction change rows
    drained = threading.Event()

    def drain() -> None:
        # moto slows down sharply as a queue fills: keep it near empty all along.
        while not drained.is_set():
            if not wiring.drain_once():
                time.sleep(0.02)

    with running(worker.run) as worker_thread, running(drain) as drain_thread:
        long_thread = threading.Thread(target=long_transaction)
        long_thread.start()
        assert long_started.wait(10)
        writers = [threading.Thread(target=writer, args=(seed,)) for seed in range(8)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        others_done.set()
        long_thread.join()
        expected += sum(counts) + 1
        assert expected >= 1000
        deadline = time.monotonic() + 120
        while len(wiring.received) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # anything beyond the expected count would be a duplicate: let it come
        drained.set()
        drain_thread.join(10)
        wiring.drain_once()
        stop.set()
        worker_thread.join(10)

    # Then: every change arrived once, with the EventBridge envelope we promise
    details: list[dict[str, Any]] = [message["detail"] for message in wiring.received]
    assert len({d["id"] for d in details}) == expected
    first = wiring.received[0]
    assert first["source"] == settings.event_source
    assert first["detail-type"].startswith("public.accounts.")
    assert first["detail"]["table"] == "public.accounts"
    # ... the long transaction's change too
    arrival = [d["position"] for d in details]
    long_position = next(d["position"] for d in details if d["key"] == {"id": 1000})
    if capture == "changelog":
        # ... although changes with higher change-log ids were published before it
        assert any(p > long_position for p in arrival[: arrival.index(long_position)])
    else:
        # ... and in logical mode positions follow commit order: it committed last
        assert long_position == max(arrival)
    # ... and per key, position order is commit order: versions 1, 2, 3, ... without a gap
    for key, events in by_key(details).items():
        versions = [e["after"]["version"] for e in events]
        assert versions == list(range(1, len(versions) + 1)), key
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM cdc.changelog")).scalar() == 0


@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_terminated_connection_is_retried_not_fatal(pg_url: URL, capture: str) -> None:
    settings = settings_for_mode(pg_url, capture, "accounts", batch_size="10", bus="null")
    engine = prepared(settings, ACCOUNTS)
    publisher = NullPublisher()
    worker = Worker(settings, source_for(settings, engine), publisher)
    legacy = raw_engine(pg_url)
    admin = raw_engine(pg_url)
    with running(worker.run) as thread:
        for key in range(200):
            with legacy.begin() as connection:
                connection.execute(text("INSERT INTO accounts VALUES (:k, 1, '')"), {"k": key})
            if key % 40 == 0:
                with admin.begin() as connection:
                    connection.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name LIKE 'cdc%' AND datname = current_database() "
                            "AND pid <> pg_backend_pid()"
                        )
                    )
        deadline = time.monotonic() + 30
        while publisher.accepted < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.stop.set()
        thread.join(10)
    assert not thread.is_alive()
    # At least once: a stream cut before its acknowledgement is read again (same ids)
    assert publisher.accepted >= 200
    if capture == "changelog":
        assert publisher.accepted == 200


def test_the_worker_holds_no_transaction_between_batches(pg_url: URL) -> None:
    # An idle-in-transaction reader would block DDL on the change log and hold back vacuum.
    settings = settings_for_mode(pg_url, "changelog", "accounts", bus="null")
    engine = prepared(settings, ACCOUNTS)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO accounts VALUES (1, 1, '')"))
    worker = Worker(settings, source_for(settings, engine), NullPublisher())
    assert worker.step() == 1
    assert worker.step() == 0
    with raw_engine(pg_url).connect() as connection:
        states = (
            connection.execute(
                text(
                    "SELECT state FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'cdc'"
                )
            )
            .scalars()
            .all()
        )
        assert states and "idle in transaction" not in states
        connection.execute(text("SET lock_timeout = '2s'"))
        connection.execute(text("LOCK TABLE cdc.changelog IN ACCESS EXCLUSIVE MODE"))


class RecordingPublisher(NullPublisher):
    def __init__(self) -> None:
        super().__init__()
        self.details: list[dict[str, Any]] = []

    def publish(self, entries: Any) -> Any:
        import json

        self.details.extend(json.loads(entry.detail) for entry in entries)
        return super().publish(entries)


def test_read_ahead_keeps_a_late_commit_before_the_later_changes_of_its_key(pg_url: URL) -> None:
    # The worker reads the next batch while it publishes the current one. A transaction that
    # took a low change-log id and commits after that read must still come out before a later
    # change of its key: a read-ahead that skipped ids below the last one read would lose that.
    settings = settings_for_mode(pg_url, "changelog", "accounts", batch_size="5", bus="null")
    engine = prepared(settings, ACCOUNTS)
    publisher = RecordingPublisher()
    worker = Worker(settings, source_for(settings, engine), publisher)
    legacy = raw_engine(pg_url)
    with legacy.begin() as connection:
        connection.execute(text("INSERT INTO accounts VALUES (0, 1, '')"))
    long = legacy.connect()
    long.begin()
    long.execute(text("UPDATE accounts SET version = 2 WHERE id = 0"))  # change-log id 2
    with legacy.begin() as connection:
        for key in range(1, 21):  # change-log ids 3 to 22
            connection.execute(text("INSERT INTO accounts VALUES (:k, 1, '')"), {"k": key})
    # Two full batches while the long transaction is open: the second was read ahead. The
    # batches read ahead after it come after the late commit (id 2) and a later change of
    # its key (id 23); one that started above the last id read would put 23 before 2.
    assert worker.step() == 5
    assert worker.step() == 5
    long.commit()
    long.close()
    with legacy.begin() as connection:
        connection.execute(text("UPDATE accounts SET version = 3 WHERE id = 0"))
    while worker.step():
        pass
    worker.source.close()

    assert len(publisher.details) == 23  # each change once
    versions = [d["after"]["version"] for d in publisher.details if d["key"] == {"id": 0}]
    assert versions == [1, 2, 3]
    positions = [d["position"] for d in publisher.details if d["key"] == {"id": 0}]
    assert positions == sorted(positions)


def changelog_source_with_rows(
    pg_url: URL,
    keys: range,
    batch_size: str = "5",
) -> tuple[Any, Any, Any]:
    """(settings, change-log source, legacy engine) with a row inserted for each key."""
    settings = settings_for_mode(pg_url, "changelog", "accounts", batch_size=batch_size, bus="null")
    engine = prepared(settings, ACCOUNTS)
    legacy = raw_engine(pg_url)
    with legacy.begin() as connection:
        for key in keys:
            connection.execute(text("INSERT INTO accounts VALUES (:k, 1, '')"), {"k": key})
    return settings, source_for(settings, engine), legacy


def test_an_acknowledgement_cut_off_in_flight_is_sent_again_and_counted_once(pg_url: URL) -> None:
    # The DELETE of a published batch runs while the worker reads on. If its connection dies
    # before its outcome is known, it is sent again on a new connection before anything else.
    settings, source, legacy = changelog_source_with_rows(pg_url, range(1, 8))
    schema = settings.state_schema
    batch = source.read(5)
    assert len(batch.changes) == 5
    ahead = source._ahead
    blocker = legacy.connect()
    blocker.begin()  # holds the batch's rows, so the DELETE waits
    blocker.execute(
        text(f'SELECT id FROM "{schema}".changelog WHERE id = ANY(:ids) FOR UPDATE'),
        {"ids": list(batch.ack_ids)},
    )
    source.ack(batch, [])
    pid = ahead._connection.info.backend_pid
    with legacy.begin() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    blocker.rollback()
    blocker.close()
    with pytest.raises(Exception):  # noqa: B017 - how the cut shows is libpq's business
        source.read(5)
    rest = source.read(5)  # sends the DELETE again first, then reads what is left
    assert [c.after["id"] for c in rest.changes] == [6, 7]
    source.ack(rest, [])
    source.close()
    with legacy.connect() as connection:
        left = connection.execute(text(f'SELECT count(*) FROM "{schema}".changelog')).scalar()
        published = connection.execute(
            text(f"SELECT published FROM \"{schema}\".checkpoints WHERE stream = 'changelog'")
        ).scalar()
    assert left == 0
    assert published == 7


@pytest.mark.parametrize("zone", ["UTC", "America/St_Johns"])
def test_positions_and_ids_made_by_the_server_are_those_python_makes(
    pg_url: URL, zone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The read-ahead query makes each change's position and identity (the event id's input)
    # in SQL; the ids must not change with it, whatever the session's TimeZone.
    monkeypatch.setenv("PGTZ", zone)
    settings, source, legacy = changelog_source_with_rows(pg_url, range(1, 21), batch_size="50")
    with legacy.begin() as connection:
        connection.execute(text("UPDATE accounts SET version = 2"))
    batch = source.read(50)
    assert len(batch.changes) == 40
    with legacy.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT id, table_name, op, before::text, after::text, txid, origin, captured_at "
                f'FROM "{settings.state_schema}".changelog ORDER BY id'
            )
        ).all()
    made_by_python = [source._change(*row) for row in rows]
    assert [(c.position, c.identity) for c in batch.changes] == [
        (c.position, c.identity) for c in made_by_python
    ]
    source.close()


def test_closing_waits_for_the_acknowledgement_in_flight(pg_url: URL) -> None:
    # SIGTERM ends `cdc run` after the batch in hand is acknowledged: the DELETE sent ahead
    # must be finished, not dropped with the connection, or the batch would be published again.
    settings, source, legacy = changelog_source_with_rows(pg_url, range(1, 4))
    schema = settings.state_schema
    batch = source.read(5)
    blocker = legacy.connect()
    blocker.begin()  # holds the rows, so the DELETE is still running when close() is called
    blocker.execute(text(f'SELECT id FROM "{schema}".changelog FOR UPDATE'))
    source.ack(batch, [])
    closing = threading.Thread(target=source.close)
    closing.start()
    time.sleep(0.3)
    assert closing.is_alive()  # waiting for the DELETE
    blocker.rollback()
    blocker.close()
    closing.join(10)
    assert not closing.is_alive()
    with legacy.connect() as connection:
        assert connection.execute(text(f'SELECT count(*) FROM "{schema}".changelog')).scalar() == 0


@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_cdc_run_stops_naming_a_table_it_cannot_capture_instead_of_idling(
    pg_url: URL, capture: str
) -> None:
    # Given accounts set up for capture, and notes created after `cdc setup`
    settings = settings_for_mode(pg_url, capture, "accounts")
    engine = prepared(settings, ACCOUNTS + "; CREATE TABLE notes (id int PRIMARY KEY)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(
        CDC_DATABASE_URL=pg_url.render_as_string(hide_password=False),
        CDC_CAPTURE=capture,
        CDC_BUS="null",
        CDC_LOG_FORMAT="json",
    )
    if settings.slot_name:
        env["CDC_SLOT_NAME"] = settings.slot_name
    not_captured = (
        "public.notes has no capture triggers (run `cdc setup`)"
        if capture == "changelog"
        else "public.notes is not in publication cdc_pub (run `cdc setup`)"
    )
    try:
        for tables, says in (
            ("accounts,notes", not_captured),
            ("accounts,nothere", "public.nothere does not exist (check CDC_TABLES"),
        ):
            # When `cdc run` is asked for them, Then it ends at once with what to do
            run = subprocess.run(
                [sys.executable, "-m", "cdc", "run"],
                env={**env, "CDC_TABLES": tables},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert run.returncode == 1, run.stderr
            assert says in run.stderr and "CDC_MISSING_TABLES=warn" in run.stderr
    finally:
        drop_slot(engine, settings)

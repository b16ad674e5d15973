"""The logical mode's heartbeat: after ``CDC_HEARTBEAT_INTERVAL`` seconds without a message
from the stream, the worker writes a non-transactional logical message (``cdc.heartbeat``) so
that the slot can advance while the captured tables are quiet and the rest of the server is
busy.

On PostgreSQL 15 the walsender's keepalives already carry the slot past such WAL (their WAL end
is what the decoder has read), so "the slot advanced" alone does not show the heartbeat works
(``test_logical.test_quiet_tables_on_a_busy_server_still_advance_the_slot`` passes without it).
These tests look at the heartbeat itself: the messages in the WAL, read through a second slot,
and the slot carried by nothing but them once keepalives bring no position, as on a server
whose keepalives lag behind the WAL the decoder skipped."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL

from cdc.capture.pgoutput import Message, decode
from cdc.core.settings import Settings
from tests.integration.helpers import drop_slot
from tests.integration.test_logical import logical, write

pytestmark = pytest.mark.integration

HEARTBEAT = "cdc.heartbeat"
KEEPALIVE = struct.Struct("!QqB")  # after 'k': WAL end, send time, reply requested
# WAL in another database, which this slot's decoder reads and skips
NOISE = "SELECT pg_logical_emit_message(false, 'noise', repeat('y', 20000))"


def lsn(engine: Engine, query: str, **params: str) -> int:
    with engine.connect() as connection:
        value = connection.execute(text(query), params).scalar_one()
    return int(value or 0)


def confirmed(engine: Engine, settings: Settings) -> int:
    return lsn(
        engine,
        "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0') FROM pg_replication_slots "
        "WHERE slot_name = :s",
        s=settings.slot_name,
    )


def wal_now(engine: Engine) -> int:
    return lsn(engine, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")


def heartbeats(engine: Engine, observer: str, publication: str) -> list[Message]:
    """The heartbeat messages the observer slot has seen (peeked: left in the slot)."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(:slot, NULL, NULL, "
                "'proto_version', '1', 'publication_names', :publication, 'messages', 'true')"
            ),
            {"slot": observer, "publication": publication},
        ).scalars()
        messages = [decode(bytes(row)) for row in rows]
    return [m for m in messages if isinstance(m, Message) and m.prefix == HEARTBEAT]


def until(condition: Callable[[], bool], read: Callable[[], Any], seconds: float) -> bool:
    """Read the stream until ``condition`` holds or ``seconds`` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        read()
    return True


def test_heartbeats_are_written_after_silence_and_the_slot_passes_them(
    pg_url: URL, postgres_server: URL
) -> None:
    settings, engine, source = logical(pg_url, heartbeat_interval="1")
    elsewhere = create_engine(postgres_server)
    observer = f"observer_{pg_url.database}"[:63]
    try:
        source.read(10)  # connect
        with engine.connect() as connection:
            connection.execute(
                text("SELECT pg_create_logical_replication_slot(:s, 'pgoutput')"), {"s": observer}
            )
            connection.commit()
        # Given: the captured tables stay quiet while another database writes
        # When: the worker reads for 3.5 seconds
        started = time.monotonic()
        while time.monotonic() - started < 3.5:
            write(elsewhere, NOISE)
            assert not source.read(10).changes

        # Then: heartbeats were written, one per second of silence at most
        beats = heartbeats(engine, observer, settings.publication_name)
        assert 1 <= len(beats) <= 4, f"{len(beats)} heartbeats in 3.5 s at an interval of 1 s"
        assert all(not beat.transactional for beat in beats)
        # ... and the slot moves past the last of them, the tables still quiet
        last = beats[-1].lsn
        assert until(lambda: confirmed(engine, settings) >= last, lambda: source.read(10), 10)
    finally:
        source.close()
        elsewhere.dispose()
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_drop_replication_slot(:s)"), {"s": observer})
            connection.commit()
        drop_slot(engine, settings)


def without_keepalive_positions(stream: Any) -> None:
    """Keepalives reach the source with WAL end 0 (their reply requests still pass): the
    position they carry no longer moves the slot, and only messages of the stream can."""

    def strip(read: Callable[..., memoryview | None]) -> Callable[..., memoryview | None]:
        def frame(*args: Any) -> memoryview | None:
            data = read(*args)
            if data is not None and data[0] == ord("k"):
                _, sent, reply = KEEPALIVE.unpack_from(data, 1)
                data = memoryview(b"k" + KEEPALIVE.pack(0, sent, reply))
            return data

        return frame

    stream.ready_frame = strip(stream.ready_frame)
    stream.frame = strip(stream.frame)


def test_the_heartbeat_alone_carries_the_slot_past_wal_of_another_database(
    pg_url: URL, postgres_server: URL
) -> None:
    settings, engine, source = logical(pg_url, heartbeat_interval="0.5")
    elsewhere = create_engine(postgres_server)
    try:
        source.read(10)  # connect
        stream = source._stream
        without_keepalive_positions(stream)
        start = confirmed(engine, settings)
        # Given: WAL written in another database only, the captured tables quiet
        for _ in range(10):
            write(elsewhere, NOISE)
        written = wal_now(engine)
        assert written > start

        # When: the worker reads on; Then: the slot passes that WAL within a few heartbeats
        passed = until(lambda: confirmed(engine, settings) >= written, lambda: source.read(10), 10)
        assert passed, f"the slot stayed {written - confirmed(engine, settings)} bytes behind"
        assert source._stream is stream  # no reconnection brought the keepalives back
    finally:
        source.close()
        elsewhere.dispose()
        drop_slot(engine, settings)

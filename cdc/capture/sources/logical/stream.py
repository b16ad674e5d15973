"""The replication stream: one ``replication=database`` psycopg connection in CopyBoth mode.

psycopg 3 has no replication API, but its low-level connection speaks the protocol:
``START_REPLICATION ... LOGICAL``, then CopyBoth frames read with ``get_copy_data`` and
standby status updates written with ``put_copy_data``. The server sends two kinds of frame:
XLogData ('w', a header then one pgoutput message) and keepalives ('k', its WAL end and
whether it wants a status update at once). What the frames mean is the source's business.
"""

from __future__ import annotations

import select
import struct
import time

import psycopg
from psycopg import pq

from cdc.capture.pgoutput import format_lsn
from cdc.capture.slots import slot_lost_message
from cdc.core.errors import PermanentError
from cdc.core.tables import quote_ident

XLOG_DATA = 0x77  # 'w'
KEEPALIVE = 0x6B  # 'k'
_XLOG = struct.Struct("!QQq")  # after 'w': WAL start, WAL end, send time
XLOG_HEADER = 1 + _XLOG.size  # the pgoutput message starts here
_KEEPALIVE = struct.Struct("!QqB")  # after 'k': WAL end, send time, reply requested
_FEEDBACK = struct.Struct("!cQQQqB")  # 'r', written, flushed, applied, clock, reply requested
_PG_EPOCH_MICROS = 946_684_800_000_000


def _pg_now() -> int:
    return int(time.time() * 1_000_000) - _PG_EPOCH_MICROS


def keepalive(frame: memoryview) -> tuple[int, bool]:
    """A keepalive frame's WAL end, and whether the server asks for a status update now."""
    wal_end, _, reply = _KEEPALIVE.unpack_from(frame, 1)
    return wal_end, bool(reply)


class ReplicationStream:
    """One ``replication=database`` connection in CopyBoth mode."""

    def __init__(self, conninfo: str) -> None:
        self.connection = psycopg.connect(conninfo, replication="database", autocommit=True)
        self.pg = self.connection.pgconn

    def start(self, slot: str, publication: str, start_lsn: int = 0) -> None:
        command = (
            f"START_REPLICATION SLOT {quote_ident(slot)} LOGICAL {format_lsn(start_lsn)} "
            f"(proto_version '1', publication_names '{quote_ident(publication)}', "
            "messages 'true')"
        )
        self.pg.send_query(command.encode())
        while True:
            self.pg.consume_input()
            if not self.pg.is_busy():
                break
            select.select([self.pg.socket], [], [], 1.0)
        result = self.pg.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            message = (result.error_message if result else b"").decode(errors="replace").strip()
            if "invalidated" in message or "can no longer get changes" in message:
                raise PermanentError(slot_lost_message(slot))
            if "was not created in this database" in message:
                raise PermanentError(
                    f"replication slot {slot!r} belongs to another database of the server; set "
                    "CDC_SLOT_NAME to a slot of this database's own, which `cdc setup` creates"
                )
            raise psycopg.OperationalError(f"START_REPLICATION failed: {message}")

    def ready_frame(self) -> memoryview | None:
        """A CopyData frame libpq already holds, or None: no waiting, no system call."""
        size, data = self.pg.get_copy_data(1)
        return data if size > 0 else None

    def frame(self, timeout: float) -> memoryview | None:
        """The next CopyData frame, or None when none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        consumed = False
        while True:
            size, data = self.pg.get_copy_data(1)
            if size > 0:
                return data
            if size == -1:
                result = self.pg.get_result()
                message = (result.error_message if result else b"").decode(errors="replace")
                raise psycopg.OperationalError(f"replication stream ended: {message.strip()}")
            if not consumed:
                # Take in what the socket already holds (this does not block) before deciding
                # nothing came: without it a batch ends at libpq's buffer, a tenth of its size.
                self.pg.consume_input()
                consumed = True
                continue
            consumed = False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([self.pg.socket], [], [], remaining)
            if not readable:
                return None
            self.pg.consume_input()

    def feedback(self, flushed_lsn: int) -> None:
        """A standby status update: written, flushed and applied all at ``flushed_lsn``."""
        self.pg.put_copy_data(
            _FEEDBACK.pack(b"r", flushed_lsn, flushed_lsn, flushed_lsn, _pg_now(), 0)
        )
        self.pg.flush()

    def close(self) -> None:
        self.connection.close()

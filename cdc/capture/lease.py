"""The leader lease: one capture worker per source, a standby waiting to take over.

A PostgreSQL session advisory lock, held on a connection of its own for the life of the
process. PostgreSQL releases it as soon as that session ends, also when the holder dies by
SIGKILL (the server sees the socket close), so a standby polling for it takes over within its
poll interval. If the lease connection itself is lost, the worker can no longer be sure it is
the only one, so it stops (and a supervisor restarts it as a standby).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)


def lease_key(name: str) -> int:
    """A signed 64-bit advisory lock key for a lease name."""
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big", signed=True)


class Lease:
    def __init__(self, engine: Engine, name: str, poll_seconds: float = 1.0) -> None:
        self.engine = engine
        self.name = name
        self.key = lease_key(name)
        self.poll_seconds = poll_seconds
        self._connection: Connection | None = None
        self._checked_at = 0.0

    def acquire(self, stop: threading.Event) -> bool:
        """Wait until this process holds the lease; False when stopped first."""
        waited = False
        while not stop.is_set():
            if self._try():
                if waited:
                    log.info("lease %s acquired: taking over", self.name)
                return True
            if not waited:
                log.info("lease %s is held by another worker; waiting as a standby", self.name)
                waited = True
            stop.wait(self.poll_seconds)
        return False

    def _try(self) -> bool:
        try:
            if self._connection is None:
                self._connection = self.engine.connect().execution_options(
                    isolation_level="AUTOCOMMIT"
                )
            held = self._connection.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}
            ).scalar()
        except Exception as exc:
            log.warning("lease %s: database unavailable (%s)", self.name, exc)
            self._drop()
            return False
        return bool(held)

    def still_held(self, every: float = 5.0) -> bool:
        """Whether the lease's session is alive (checked at most every ``every`` seconds)."""
        now = time.monotonic()
        if now - self._checked_at < every:
            return True
        self._checked_at = now
        if self._connection is None:
            return False
        try:
            self._connection.execute(text("SELECT 1"))
            return True
        except Exception:
            self._drop()
            return False

    def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # usually broken already
                self._connection.invalidate()
                self._connection.close()
            self._connection = None

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self._drop()

"""Names of the scratch databases that tests (and benchmarks) create on a shared server, and
their removal.

Naming rule, shared with scripts/prepare-postgres and bench/common.py:

    cdc_<test|bench>_<host>_<pid>_<nonce>_<random>
                     \\________________/
                          run id

- <host>: 8 hex digits, md5 of "<uname -n>\\n<boot id>\\n<pid namespace>" (the last two read
  from /proc/sys/kernel/random/boot_id and /proc/self/ns/pid, empty where they do not exist),
  so it names one process-id space: two containers with the same hostname do not share it.
- <pid>: decimal id of the process that owns the run (the pytest process, or the benchmark
  script), alive as long as the run is.
- <nonce>: 6 random hex digits, so that a run id is never reused, even with the same pid.
- <random>: 8 random hex digits per database.

A database whose <host> is this machine's and whose <pid> no longer exists belongs to a run that
was killed: `scripts/prepare-postgres --clean-stale` drops it (with its replication slots, which
would otherwise retain WAL for ever). Anything else is left alone, whoever's it is.
"""

from __future__ import annotations

import hashlib
import os
import platform
import secrets
import time
from collections.abc import Sequence

from sqlalchemy import Connection, text


def _read(path: str) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def host_tag() -> str:
    """This machine's (process-id space's) part of a run id; scripts/prepare-postgres computes
    the same string."""
    key = "\n".join([platform.node(), _read("/proc/sys/kernel/random/boot_id"), _pid_namespace()])
    return hashlib.md5(key.encode(), usedforsecurity=False).hexdigest()[:8]


def new_run_id(pid: int | None = None) -> str:
    """A run id owned by process ``pid`` (default: this one)."""
    return f"{host_tag()}_{os.getpid() if pid is None else pid}_{secrets.token_hex(3)}"


def database_name(kind: str, run_id: str) -> str:
    """A new scratch database name of the run; kind is "test" or "bench"."""
    return f"cdc_{kind}_{run_id}_{secrets.token_hex(4)}"


def run_databases(connection: Connection, kind: str, run_id: str) -> list[str]:
    """The databases of that run that exist on the server."""
    prefix = f"cdc_{kind}_{run_id}_"
    rows = connection.execute(
        text("SELECT datname FROM pg_database WHERE left(datname, length(:p)) = :p"),
        {"p": prefix},
    )
    return sorted(name for (name,) in rows)


def drop_databases(connection: Connection, names: Sequence[str]) -> None:
    """Drop the databases and their replication slots. Only sessions connected to them are
    ended. ``connection`` is an AUTOCOMMIT connection to another database of the server."""
    for name in names:
        # Replication slots block DROP DATABASE; their walsenders must go first.
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d "
                "AND pid <> pg_backend_pid()"
            ),
            {"d": name},
        )
        for _ in range(50):
            slots = connection.execute(
                text("SELECT slot_name, active FROM pg_replication_slots WHERE database = :d"),
                {"d": name},
            ).all()
            if not any(active for _, active in slots):
                break
            time.sleep(0.1)
        for slot, _ in slots:
            connection.execute(text("SELECT pg_drop_replication_slot(:s)"), {"s": slot})
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

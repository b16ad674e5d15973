"""Shared setup of the benchmarks: a scratch database, the legacy table, a change log filled
through the real capture triggers, and the table of figures each script prints.

Every figure is printed beside a baseline measured in the same run, as a ratio: the machine is
small and shared, so absolute numbers drift from run to run while ratios hold.
"""

from __future__ import annotations

import hashlib
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, make_url

from cdc.bus.publishers import Publisher
from cdc.capture import triggers
from cdc.capture.catalog import read_table
from cdc.capture.sources.changelog import ChangeLogSource
from cdc.capture.worker import Worker
from cdc.core import database
from cdc.core.dialects import dialect_of
from cdc.core.settings import Settings, load_settings
from cdc.core.state import state_tables

BASE_URL_ENV = "CDC_BENCH_DATABASE_URL"
DEFAULT_BASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}

LEGACY_TABLE = "public.accounts"
# A legacy table with a handful of typical columns: int key, text, numeric, timestamptz, bool.
LEGACY_DDL = """
CREATE TABLE public.accounts (
    id integer PRIMARY KEY,
    name text NOT NULL,
    email text,
    balance numeric(12, 2) NOT NULL,
    updated_at timestamptz NOT NULL,
    active boolean NOT NULL
)
"""
# Row values of realistic width; the same expression fills every run.
_ROW_VALUES = (
    "g, 'customer ' || g, 'customer' || g || '@example.com', "
    "(g % 10000) * 1.25, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second', "
    "g % 3 <> 0"
)


def base_url() -> URL:
    """The server to create scratch databases on (CDC_BENCH_DATABASE_URL); local only."""
    url = make_url(os.environ.get(BASE_URL_ENV, DEFAULT_BASE_URL))
    if url.host not in LOCAL_HOSTS:
        raise SystemExit(f"{BASE_URL_ENV} must name a server on 127.0.0.1, not {url.host!r}")
    return url.set(drivername="postgresql+psycopg")


def libpq(url: URL) -> str:
    """The URL as libpq (psycopg, pgbench) takes it."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _host_tag() -> str:
    """This machine's (process-id space's) part of a run id, as tests/databases.py makes it."""
    try:
        pid_namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_namespace = ""
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            boot_id = file.read().strip()
    except OSError:
        boot_id = ""
    key = "\n".join([platform.node(), boot_id, pid_namespace])
    return hashlib.md5(key.encode(), usedforsecurity=False).hexdigest()[:8]


# Scratch databases are named cdc_bench_<run id>_<random>, the run id naming this process, by
# the rule in tests/databases.py: scripts/prepare-postgres --clean-stale drops them once this
# process is gone (killed before it could), and never while it runs.
RUN_ID = f"{_host_tag()}_{os.getpid()}_{secrets.token_hex(3)}"


@contextmanager
def scratch_database(prefix: str = "cdc_bench") -> Iterator[URL]:
    """A fresh database on the base server, dropped on the way out whatever happened."""
    server = base_url()
    name = f"{prefix}_{RUN_ID}_{secrets.token_hex(4)}"
    with psycopg.connect(libpq(server), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name)
    finally:
        with psycopg.connect(libpq(server), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def capture_settings(url: URL, **extra: str) -> Settings:
    """The worker's settings for the scratch database, built as the CLI builds them."""
    env = {
        "CDC_DATABASE_URL": url.render_as_string(hide_password=False),
        "CDC_TABLES": LEGACY_TABLE,
        "CDC_LOG_LEVEL": "WARNING",
    }
    env.update({f"CDC_{key.upper()}": value for key, value in extra.items()})
    return load_settings(env)


def prepare(settings: Settings, with_triggers: bool = True) -> Engine:
    """Create the legacy table, migrate the state schema and (optionally) install triggers."""
    engine = database.connect(settings)
    with engine.begin() as connection:
        connection.execute(text(LEGACY_DDL))
    database.migrate(engine, settings)
    if with_triggers:
        install_triggers(settings, engine)
    return engine


def install_triggers(settings: Settings, engine: Engine) -> None:
    infos = [read_table(engine, ref) for ref in settings.table_refs]
    triggers.install(engine, infos, settings.state_schema)


def drop_triggers(settings: Settings, engine: Engine) -> None:
    triggers.drop(engine, settings.table_refs, settings.state_schema)


def new_worker(settings: Settings, engine: Engine, publisher: Publisher) -> Worker:
    source = ChangeLogSource(
        engine, state_tables(dialect_of(engine), settings.state_schema), settings.default_schema
    )
    for ref in settings.table_refs:
        source.table(ref.qualified)  # read the catalog once, outside any timing
    return Worker(settings, source, publisher)


def fill_changelog(url: URL, changes: int) -> None:
    """Empty the legacy table and the change log, then write ``changes`` row changes through
    the capture triggers: half inserts, half updates of the inserted rows (an odd one more
    insert). Identical content every time, so each side of a comparison reads the same log."""
    inserts = changes - changes // 2
    updates = changes // 2
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        with conn.transaction():
            # Replica role silences the capture triggers (TRUNCATE's as well) for the reset.
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("TRUNCATE public.accounts")
            conn.execute("TRUNCATE cdc.changelog RESTART IDENTITY")
        # Transactions of 1,000 rows, so txids vary as they do under a real application.
        for start in range(1, inserts + 1, 1000):
            stop = min(start + 999, inserts)
            conn.execute(_insert_rows(start, stop))
        for start in range(1, updates + 1, 1000):
            stop = min(start + 999, updates)
            conn.execute(
                "UPDATE public.accounts SET balance = balance + 10.5, "
                "updated_at = updated_at + interval '1 day', active = NOT active "
                f"WHERE id BETWEEN {start} AND {stop}"
            )
        conn.execute("VACUUM ANALYZE cdc.changelog")
        conn.execute("VACUUM ANALYZE public.accounts")


def seed_legacy(url: URL, rows: int) -> None:
    """Fill the legacy table with ``rows`` rows, silently (no change-log rows)."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(_insert_rows(1, rows))
        conn.execute("VACUUM ANALYZE public.accounts")


def insert_rows_sql(start: int, stop: int) -> str:
    """The INSERT of legacy rows ``start``..``stop`` with the values every fill uses."""
    return _insert_rows(start, stop)


def _insert_rows(start: int, stop: int) -> str:
    return (
        f"INSERT INTO public.accounts SELECT {_ROW_VALUES} "
        f"FROM generate_series({start:d}, {stop:d}) AS g"
    )


def changelog_count(url: URL) -> int:
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute("SELECT count(*) FROM cdc.changelog").fetchone()
    assert row is not None
    return int(row[0])


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass(frozen=True)
class Figure:
    """One line of a result table: a measured value, its baseline, and a target on either."""

    name: str
    value: float
    baseline: float | None = None
    unit: str = ""
    # Targets: a floor on the value itself, and a floor on value / baseline.
    value_target: float | None = None
    ratio_target: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def verdict(self) -> str:
        checks: list[bool] = []
        if self.value_target is not None:
            checks.append(self.value >= self.value_target)
        if self.ratio_target is not None and self.ratio is not None:
            checks.append(self.ratio >= self.ratio_target)
        if not checks:
            return ""
        return "PASS" if all(checks) else "MISS"

    @property
    def target(self) -> str:
        parts = []
        if self.value_target is not None:
            parts.append(f">= {self.value_target:,.0f}")
        if self.ratio_target is not None:
            parts.append(f"ratio >= {self.ratio_target:.2f}")
        return ", ".join(parts)


def print_table(title: str, figures: Sequence[Figure]) -> None:
    header = ("figure", "value", "baseline", "ratio", "target", "")
    rows = [header]
    for f in figures:
        rows.append(
            (
                f.name,
                f"{f.value:,.0f} {f.unit}".strip(),
                "" if f.baseline is None else f"{f.baseline:,.0f} {f.unit}".strip(),
                "" if f.ratio is None else f"{f.ratio:.3f}",
                f.target,
                f.verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def drop_database_slots(url: URL, timeout: float = 30.0) -> list[str]:
    """Drop every replication slot of the scratch database ``url``, terminating the walsenders
    that still stream them first (an active slot cannot be dropped, and any slot blocks DROP
    DATABASE). The names of the slots dropped."""
    deadline = time.monotonic() + timeout
    dropped: list[str] = []
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT slot_name, active_pid FROM pg_replication_slots "
                "WHERE database = current_database()"
            ).fetchall()
            if not rows:
                return dropped
            for name, pid in rows:
                if pid is not None:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    continue
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                    dropped.append(name)
                except (psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
                    pass  # taken by a walsender meanwhile (terminated on the next pass), or gone
            if time.monotonic() > deadline:
                raise SystemExit(f"could not drop the replication slots {[r[0] for r in rows]}")
            time.sleep(0.1)


@contextmanager
def database_slots_dropped(url: URL) -> Iterator[None]:
    """Drops the scratch database's replication slots on the way out, whatever happened: put it
    inside ``scratch_database()``, whose DROP DATABASE a leftover slot would make fail."""
    try:
        yield
    finally:
        drop_database_slots(url)

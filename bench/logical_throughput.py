"""Logical-mode capture throughput: changes/s from a pgoutput replication slot to the
NullPublisher through the real pipeline (``Worker.step()`` on the LogicalSource that
``cdc.cli.open_source`` builds: stream -> decode -> convert -> render -> publish -> ack with its
checkpoint and slot feedback), divided by ``pg_recvlogical`` streaming the same changes with
the same plugin (pgoutput, proto_version 1, the same publication) to /dev/null, in the same run.

Two workloads of the same number of row changes (half inserts, half updates of those rows):
one big transaction, and small transactions of 100 rows. In every round each side gets its own
slot on one publication, created before the changes are written, so both decode exactly the
same WAL from the start of their slot. Also reported: the worker's peak RSS growth while it
streams, which shows that a big transaction is not held in memory.

Targets: at least 100,000 changes/s, and at least 0.8 of pg_recvlogical's rate.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from common import (
    Figure,
    capture_settings,
    insert_rows_sql,
    libpq,
    median,
    prepare,
    print_table,
    scratch_database,
    timed,
)
from sqlalchemy.engine import URL

from cdc.app import open_source
from cdc.bus.publishers.file import NullPublisher
from cdc.capture import slots
from cdc.capture.catalog import read_table
from cdc.capture.pgoutput import format_lsn, parse_lsn
from cdc.capture.worker import Worker, tune_garbage_collector
from cdc.core import database
from cdc.core.settings import Settings

TARGET_RATE = 100_000
TARGET_RATIO = 0.8
SMALL_TRANSACTION_ROWS = 100
PUBLICATION = "cdc_bench_pub"
# A side that takes longer than this is abandoned (the run fails, the slots are still dropped).
SIDE_TIMEOUT = 240.0
# The same update as bench/common.py's fill_changelog.
UPDATE = (
    "UPDATE public.accounts SET balance = balance + 10.5, "
    "updated_at = updated_at + interval '1 day', active = NOT active "
    "WHERE id BETWEEN {start:d} AND {stop:d}"
)


@dataclass(frozen=True)
class Workload:
    name: str
    rows_per_transaction: int | None  # None: every change in one transaction


@dataclass(frozen=True)
class Written:
    end_lsn: int  # at or past the last commit: pg_recvlogical's --endpos
    wal_bytes: int  # WAL written meanwhile (the server's, so other databases' writes count too)


@dataclass(frozen=True)
class WorkerRun:
    seconds: float
    cpu_seconds: float
    batches: int
    rss_growth_kb: int  # peak RSS while streaming, less the RSS before
    peak_rss_kb: int = 0  # the process's VmHWM after streaming (absolute; the run's own peak
    # when clear_refs reset it, the process's lifetime peak otherwise)


@dataclass(frozen=True)
class BaselineRun:
    seconds: float
    cpu_seconds: float


# -- slots ------------------------------------------------------------------------------------


def worker_settings(url: URL, batch_size: int) -> Settings:
    assert url.database is not None
    return capture_settings(
        url,
        bus="null",
        capture="logical",
        batch_size=str(batch_size),
        slot_name=f"{url.database}_worker",
        publication_name=PUBLICATION,
    )


def baseline_slot(url: URL) -> str:
    return f"{url.database}_recvlogical"


def create_slots(url: URL, settings: Settings) -> None:
    """The publication and the worker's slot as ``cdc setup`` makes them, then the baseline's
    slot on the same publication: both start at the same point, before the writes."""
    engine = database.connect(settings)
    try:
        infos = [read_table(engine, ref) for ref in settings.table_refs]
        slots.install(engine, infos, settings.slot_name, settings.publication_name)
    finally:
        engine.dispose()
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (baseline_slot(url),)
        )


def drop_slots(url: URL, timeout: float = 30.0) -> None:
    """Drop every replication slot of the scratch database, terminating the walsenders that
    still stream them first (an active slot cannot be dropped, and any slot blocks DROP
    DATABASE)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT slot_name, active_pid FROM pg_replication_slots "
                "WHERE database = current_database()"
            ).fetchall()
            if not rows:
                return
            for name, pid in rows:
                if pid is not None:
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    continue
                # Taken by a walsender meanwhile: it is terminated on the next pass.
                with contextlib.suppress(psycopg.errors.ObjectInUse):
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            if time.monotonic() > deadline:
                raise SystemExit(f"could not drop the replication slots {[r[0] for r in rows]}")
            time.sleep(0.1)


@contextmanager
def slots_dropped(url: URL) -> Iterator[None]:
    try:
        yield
    finally:
        drop_slots(url)


# -- workload ---------------------------------------------------------------------------------


def reset_table(url: URL) -> None:
    """Empty the legacy table. Run while no slot exists, so no slot ever decodes it."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("TRUNCATE public.accounts")
        conn.execute("VACUUM ANALYZE public.accounts")


def write_changes(url: URL, changes: int, rows_per_transaction: int | None) -> Written:
    """Insert ``changes - changes // 2`` rows, then update ``changes // 2`` of them: in one
    transaction, or in transactions of ``rows_per_transaction`` rows."""
    inserts = changes - changes // 2
    updates = changes // 2
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        # Asynchronous commit makes the small transactions cheap to write; the WAL is the same.
        conn.execute("SET synchronous_commit = off")
        start_lsn = _lsn(conn, "pg_current_wal_insert_lsn()")
        if rows_per_transaction is None:
            with conn.transaction():
                conn.execute(insert_rows_sql(1, inserts))
                conn.execute(UPDATE.format(start=1, stop=updates))
        else:
            step = rows_per_transaction
            for first in range(1, inserts + 1, step):
                conn.execute(insert_rows_sql(first, min(first + step - 1, inserts)))
            for first in range(1, updates + 1, step):
                conn.execute(UPDATE.format(start=first, stop=min(first + step - 1, updates)))
        # The insert position is at or past the end of the last commit record; the walsenders
        # decode only flushed WAL, so wait for the (asynchronous) flush to reach it.
        end_lsn = _lsn(conn, "pg_current_wal_insert_lsn()")
        deadline = time.monotonic() + 30
        while _lsn(conn, "pg_current_wal_flush_lsn()") < end_lsn:
            if time.monotonic() > deadline:
                raise SystemExit("the WAL was not flushed within 30 s")
            time.sleep(0.01)
    return Written(end_lsn, end_lsn - start_lsn)


def _lsn(conn: psycopg.Connection[tuple[object, ...]], function: str) -> int:
    row = conn.execute(f"SELECT {function}::text").fetchone()
    assert row is not None
    return parse_lsn(str(row[0]))


# -- the two sides ----------------------------------------------------------------------------


def recvlogical_side(url: URL, written: Written) -> BaselineRun:
    """Seconds for pg_recvlogical to stream the baseline slot from its start to the end LSN
    into /dev/null (process start and connection included, as the worker's connection is)."""
    command = [
        "pg_recvlogical",
        "--dbname",
        libpq(url),
        "--slot",
        baseline_slot(url),
        "--start",
        "--endpos",
        format_lsn(written.end_lsn),
        "--file",
        "/dev/null",
        "--no-loop",
        "--plugin",
        "pgoutput",
        "-o",
        "proto_version=1",
        "-o",
        f"publication_names={PUBLICATION}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=SIDE_TIMEOUT, check=False
    )
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"pg_recvlogical failed ({done.returncode}): {done.stderr.strip()}")
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (baseline_slot(url),),
        ).fetchone()
    assert row is not None
    if parse_lsn(str(row[0])) < written.end_lsn:
        raise SystemExit(
            f"pg_recvlogical stopped at {row[0]}, before the end LSN {format_lsn(written.end_lsn)}"
        )
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return BaselineRun(seconds, cpu)


def worker_side(
    url: URL, batch_size: int, expected: int, profile: cProfile.Profile | None = None
) -> WorkerRun:
    """Seconds for ``Worker.step()`` on the logical source to acknowledge every change."""
    settings = worker_settings(url, batch_size)
    engine = database.connect(settings)
    source = open_source(settings, engine)
    publisher = NullPublisher()
    worker = Worker(settings, source, publisher)
    for ref in settings.table_refs:
        source.table(ref.qualified)  # the catalog read, outside the timing
    with engine.connect():
        pass  # the pooled connection (slot check, checkpoints) opened outside the timing
    tune_garbage_collector()  # as Worker.run() does before its first batch
    rss_before = _status_kb("VmRSS")
    hwm_reset = _reset_peak_rss()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    deadline = time.monotonic() + SIDE_TIMEOUT

    def drain() -> None:
        # The replication connection opens in the first read, inside the timing.
        while worker.stats.changes < expected:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"worker acknowledged {worker.stats.changes} of {expected} "
                    f"changes in {SIDE_TIMEOUT:.0f} s"
                )
            worker.step()

    cpu_started = time.process_time()
    try:
        if profile is not None:
            profile.enable()
        seconds = timed(drain)
    finally:
        if profile is not None:
            profile.disable()
        cpu = time.process_time() - cpu_started
        source.close()  # the replication connection, and the engine
    peak = _status_kb("VmHWM")
    if hwm_reset:
        growth = peak - rss_before
    else:  # no clear_refs: ru_maxrss only shows growth past the process's earlier peak
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before
    if worker.stats.changes != expected or publisher.accepted != expected:
        raise SystemExit(
            f"worker acknowledged {worker.stats.changes} changes and published "
            f"{publisher.accepted}, expected {expected}"
        )
    return WorkerRun(seconds, cpu, worker.stats.batches, growth, peak)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak of one run can be read."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--changes",
        type=int,
        default=200_000,
        help="row changes per workload and run (default 200000)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="pg_recvlogical/worker pairs per workload; medians are reported (default 2)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=500,
        help="the worker's CDC_BATCH_SIZE (default 500, the shipped default)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the worker side with cProfile and print the top functions "
        "(slows the worker down: its figures are then not comparable)",
    )
    args = parser.parse_args()
    if shutil.which("pg_recvlogical") is None:
        raise SystemExit("pg_recvlogical is not on PATH (postgresql-client)")
    if args.changes < 2:
        raise SystemExit("--changes must be at least 2")

    workloads = [
        Workload("one transaction", None),
        Workload(f"{SMALL_TRANSACTION_ROWS}-row transactions", SMALL_TRANSACTION_ROWS),
    ]
    figures: list[Figure] = []
    notes: list[str] = []
    profiles: dict[str, cProfile.Profile] = {}
    with scratch_database() as url, slots_dropped(url):
        settings = worker_settings(url, args.batch_size)
        prepare(settings, with_triggers=False).dispose()
        small = -(-args.changes // SMALL_TRANSACTION_ROWS)
        print(
            f"logical capture throughput: {args.changes:,} changes per workload and run "
            f"(half inserts, half updates), one transaction or {small:,} transactions of "
            f"{SMALL_TRANSACTION_ROWS} rows; {args.rounds} round(s), batch {args.batch_size}"
        )
        for workload in workloads:
            baseline: list[BaselineRun] = []
            captured: list[WorkerRun] = []
            written: list[Written] = []
            profile = None
            if args.profile:
                profile = profiles.setdefault(workload.name, cProfile.Profile())
            for round_number in range(args.rounds):
                reset_table(url)
                with slots_dropped(url):
                    create_slots(url, settings)
                    written.append(write_changes(url, args.changes, workload.rows_per_transaction))
                    # Which side goes first alternates by round: the second one finds the WAL
                    # in the page cache, and drift on a noisy machine hits both alike.
                    order = (
                        ("baseline", "worker") if round_number % 2 == 0 else ("worker", "baseline")
                    )
                    for side in order:
                        if side == "baseline":
                            baseline.append(recvlogical_side(url, written[-1]))
                        else:
                            captured.append(
                                worker_side(url, args.batch_size, args.changes, profile)
                            )
                b, w = baseline[-1], captured[-1]
                print(
                    f"  {workload.name}, round {round_number + 1}: pg_recvlogical "
                    f"{args.changes / b.seconds:,.0f} /s ({b.seconds:.2f} s, cpu "
                    f"{b.cpu_seconds:.2f} s); worker {args.changes / w.seconds:,.0f} /s "
                    f"({w.seconds:.2f} s, cpu {w.cpu_seconds:.2f} s, {w.batches} batches); "
                    f"ratio {b.seconds / w.seconds:.2f}; peak RSS +{w.rss_growth_kb / 1024:.1f}"
                    f" MB (VmHWM {w.peak_rss_kb / 1024:.1f} MB); WAL "
                    f"{written[-1].wal_bytes / 2**20:.0f} MB",
                    flush=True,
                )
            worker_rate = median([args.changes / r.seconds for r in captured])
            baseline_rate = median([args.changes / r.seconds for r in baseline])
            figures.append(
                Figure(
                    f"worker, {workload.name}",
                    worker_rate,
                    baseline_rate,
                    "changes/s",
                    TARGET_RATE,
                    TARGET_RATIO,
                )
            )
            worker_us, bare_us = 1e6 / worker_rate, 1e6 / baseline_rate
            cpu_us = 1e6 * median([r.cpu_seconds for r in captured]) / args.changes
            notes.append(
                f"{workload.name}: {worker_us:.1f} us per change against {bare_us:.1f} us for "
                f"pg_recvlogical; the worker's own CPU {cpu_us:.1f} us per change; "
                f"{args.changes / median([r.batches for r in captured]):,.0f} changes per batch; "
                f"peak RSS growth {max(r.rss_growth_kb for r in captured) / 1024:.1f} MB "
                f"(largest of the rounds; the process's VmHWM "
                f"{max(r.peak_rss_kb for r in captured) / 1024:.1f} MB) while streaming "
                f"{median([x.wal_bytes for x in written]) / 2**20:.0f} MB of WAL"
            )
    print_table(
        "changes/s, Worker.step() on the logical source -> NullPublisher vs "
        "pg_recvlogical -> /dev/null (median of rounds)",
        figures,
    )
    for note in notes:
        print(note)
    for name, profile in profiles.items():
        print(f"\nworker side, {name}, cProfile, top 25 by own time:")
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()

"""Capture overhead on the legacy writes: pgbench single-row updates, 2 clients, with no capture
(the baseline) against the same load while capture runs, in the mode ``--capture`` names:

- changelog (default): the capture triggers installed and the worker draining the change log
  at the same time (``Worker.run`` in a thread, NullPublisher). Target: at least 0.75 of the
  baseline's transactions/s. Extra run, for information: triggers only, no worker.
- logical: the publication and a replication slot installed as ``cdc setup`` does in logical
  mode and the worker streaming the slot at the same time (``Worker.run`` in a thread on the
  LogicalSource of ``cdc.cli.open_source``, NullPublisher). Target: at least 0.9 of the
  baseline's transactions/s. Extra run, for information: slot only, no worker (WAL retention).
  The baseline has no slot and no publication: they are dropped after every run.

Baseline and capture runs alternate; medians are reported. How far behind the worker was when
pgbench stopped (change-log backlog, or changes and WAL not yet acknowledged) shows whether it
kept up; the run then waits until it has acknowledged every change pgbench made.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from common import (
    Figure,
    capture_settings,
    changelog_count,
    database_slots_dropped,
    drop_database_slots,
    drop_triggers,
    install_triggers,
    libpq,
    median,
    new_worker,
    prepare,
    print_table,
    scratch_database,
    seed_legacy,
)
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from cdc.app import open_source
from cdc.bus.publishers.file import NullPublisher
from cdc.capture import slots
from cdc.capture.catalog import read_table
from cdc.capture.worker import Worker
from cdc.core import database
from cdc.core.settings import Settings

TARGET_RATIOS = {"changelog": 0.75, "logical": 0.9}
TARGET_RATIO = TARGET_RATIOS["changelog"]
CLIENTS = 2
PGBENCH_SCRIPT = r"""\set id random(1, :rows)
UPDATE public.accounts SET balance = balance + 1.25, updated_at = now() WHERE id = :id;
"""


@dataclass(frozen=True)
class Run:
    tps: float
    transactions: int
    backlog: int = 0  # change-log rows left when pgbench stopped
    captured: int = 0  # changes the worker had acknowledged by then
    drain_seconds: float = 0.0  # time the worker then took to empty the log
    batches: int = 0  # batches the worker acknowledged by the end of the run
    worker_cpu: float = 0.0  # this process's CPU seconds per second of the run (the worker)
    # logical mode: WAL between the server's position and the slot's confirmed one when
    # pgbench stopped (slot only: between it and the slot's restart position, the WAL retained)
    wal_behind: int = 0
    walsender_cpu: float | None = None  # the slot's walsender, CPU seconds per second of the run


def pgbench_path() -> str:
    found = shutil.which("pgbench") or "/usr/bin/pgbench"
    if not Path(found).exists():
        raise SystemExit("pgbench not found; install postgresql-client")
    return found


def pgbench(url: URL, script: Path, rows: int, seconds: int) -> tuple[float, int]:
    """Run pgbench for ``seconds``; its tps (without connection time) and transactions."""
    command = [
        pgbench_path(),
        "--no-vacuum",
        "--client",
        str(CLIENTS),
        "--jobs",
        str(CLIENTS),
        "--time",
        str(seconds),
        "--define",
        f"rows={rows}",
        "--file",
        str(script),
        libpq(url),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"pgbench failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    count = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    if not tps or not count:
        raise SystemExit(f"cannot read pgbench's output:\n{done.stdout}")
    return float(tps.group(1)), int(count.group(1))


def settle(url: URL) -> None:
    """The same starting state for every run: no dead rows from the last one, no checkpoint
    pending from its writes."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE public.accounts")
        conn.execute("VACUUM ANALYZE cdc.changelog")
        conn.execute("CHECKPOINT")


def baseline_run(url: URL, script: Path, rows: int, seconds: int) -> Run:
    settle(url)
    tps, transactions = pgbench(url, script, rows, seconds)
    return Run(tps, transactions)


def triggers_only_run(
    url: URL, settings: Settings, engine: Engine, script: Path, rows: int, seconds: int
) -> Run:
    """Triggers installed, no worker: splits the overhead into the triggers' own cost and the
    cost of a worker competing for the same two cores."""
    install_triggers(settings, engine)
    try:
        settle(url)
        tps, transactions = pgbench(url, script, rows, seconds)
        backlog = changelog_count(url)
    finally:
        drop_triggers(settings, engine)
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("TRUNCATE cdc.changelog")
    return Run(tps, transactions, backlog)


def capture_run(
    url: URL,
    settings: Settings,
    engine: Engine,
    script: Path,
    rows: int,
    seconds: int,
    drain_timeout: float,
) -> Run:
    install_triggers(settings, engine)
    try:
        settle(url)
        worker = new_worker(settings, engine, NullPublisher())
        thread = threading.Thread(target=worker.run, name="cdc-worker", daemon=True)
        thread.start()
        try:
            # The main thread only waits on pgbench: this process's CPU time is the worker's.
            cpu_started, wall_started = time.process_time(), time.perf_counter()
            tps, transactions = pgbench(url, script, rows, seconds)
            cpu = (time.process_time() - cpu_started) / (time.perf_counter() - wall_started)
            captured, batches = worker.stats.changes, worker.stats.batches
            backlog = changelog_count(url)
            started = time.perf_counter()
            while changelog_count(url) and time.perf_counter() - started < drain_timeout:
                time.sleep(0.05)
            drain = time.perf_counter() - started
        finally:
            worker.stop.set()
            thread.join(timeout=30)
        left = changelog_count(url)
        if left:
            raise SystemExit(f"the worker left {left} changes after {drain_timeout:.0f}s")
        if worker.stats.changes != transactions:
            raise SystemExit(
                f"the worker captured {worker.stats.changes} changes for {transactions} updates"
            )
    finally:
        drop_triggers(settings, engine)
    return Run(tps, transactions, backlog, captured, drain, batches, cpu)


# -- logical mode -----------------------------------------------------------------------------


def logical_settings(url: URL, batch_size: int, poll_interval: str) -> Settings:
    """The worker's settings in logical mode, with a slot and a publication unique to the run
    (the scratch database's name is random)."""
    return capture_settings(
        url,
        bus="null",
        capture="logical",
        batch_size=str(batch_size),
        poll_interval=poll_interval,
        slot_name=f"{url.database}_overhead",
        publication_name=f"{url.database}_pub",
    )


def install_slot(settings: Settings, engine: Engine) -> None:
    """The publication and the slot, as ``cdc setup`` makes them in logical mode."""
    infos = [read_table(engine, ref) for ref in settings.table_refs]
    slots.install(engine, infos, settings.slot_name, settings.publication_name)


def drop_slot(url: URL, settings: Settings, engine: Engine) -> None:
    """The slot (its walsender terminated first, should one still stream it), then the
    publication, as ``cdc setup --drop`` removes them: the next baseline runs without both."""
    drop_database_slots(url)
    slots.drop(engine, settings.slot_name, settings.publication_name)


@dataclass(frozen=True)
class SlotPosition:
    unconfirmed: int  # WAL bytes from the slot's confirmed position to the server's
    retained: int  # WAL bytes from the slot's restart position to the server's
    walsender: int | None  # pid of the walsender streaming it


def slot_position(url: URL, slot: str) -> SlotPosition:
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, active_pid "
            "FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    if row is None:
        raise SystemExit(f"replication slot {slot} is missing")
    return SlotPosition(int(row[0] or 0), int(row[1] or 0), row[2])


def process_cpu(pid: int) -> float | None:
    """CPU seconds of a local process (the server's walsender) so far; None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class WorkerThread:
    """``Worker.run`` in a daemon thread of this process, keeping the error that ended it."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="cdc-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc
            raise

    def start(self) -> None:
        self.thread.start()

    def check(self) -> None:
        if not self.thread.is_alive():
            raise SystemExit(f"the worker stopped: {self.error!r}")

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.stop.set()
        self.thread.join(timeout=timeout)


def wait_streaming(url: URL, slot: str, runner: WorkerThread, timeout: float = 60.0) -> int:
    """Wait until the worker streams the slot (its first read connects); the walsender's pid."""
    deadline = time.monotonic() + timeout
    while True:
        runner.check()
        pid = slot_position(url, slot).walsender
        if pid is not None:
            return pid
        if time.monotonic() > deadline:
            raise SystemExit(f"the worker did not start streaming {slot} within {timeout:.0f}s")
        time.sleep(0.05)


def logical_capture_run(
    url: URL,
    settings: Settings,
    engine: Engine,
    script: Path,
    rows: int,
    seconds: int,
    drain_timeout: float,
) -> Run:
    """Slot and publication installed, the worker streaming the slot while pgbench runs; then
    wait until it has acknowledged every change pgbench made, and drop both."""
    install_slot(settings, engine)
    try:
        settle(url)
        source = open_source(settings, database.connect(settings))
        try:
            for ref in settings.table_refs:
                source.table(ref.qualified)  # the catalog read, before the run
            worker = Worker(settings, source, NullPublisher())
            runner = WorkerThread(worker)
            runner.start()
            try:
                # Streaming before pgbench starts: the replication connection is not timed.
                walsender = wait_streaming(url, settings.slot_name, runner)
                sender_started = process_cpu(walsender)
                cpu_started, wall_started = time.process_time(), time.perf_counter()
                tps, transactions = pgbench(url, script, rows, seconds)
                wall = time.perf_counter() - wall_started
                cpu = (time.process_time() - cpu_started) / wall
                captured, batches = worker.stats.changes, worker.stats.batches
                sender_ended = process_cpu(walsender)
                behind = slot_position(url, settings.slot_name).unconfirmed
                sender_cpu = None
                if sender_started is not None and sender_ended is not None:
                    sender_cpu = (sender_ended - sender_started) / wall
                started = time.perf_counter()
                while worker.stats.changes < transactions:
                    runner.check()
                    if time.perf_counter() - started > drain_timeout:
                        raise SystemExit(
                            f"the worker acknowledged {worker.stats.changes} of "
                            f"{transactions} changes {drain_timeout:.0f}s after "
                            "the run"
                        )
                    time.sleep(0.01)
                catch_up = time.perf_counter() - started
            finally:
                runner.stop()
        finally:
            source.close()  # the replication connection, and its engine
        if worker.stats.changes != transactions:
            raise SystemExit(
                f"the worker acknowledged {worker.stats.changes} changes for {transactions} updates"
            )
    finally:
        drop_slot(url, settings, engine)
    return Run(
        tps,
        transactions,
        transactions - captured,
        captured,
        catch_up,
        batches,
        cpu,
        behind,
        sender_cpu,
    )


def slot_only_run(
    url: URL, settings: Settings, engine: Engine, script: Path, rows: int, seconds: int
) -> Run:
    """Slot and publication installed, no worker: what the slot alone costs the writes (its
    WAL is retained, so checkpoints cannot recycle segments), apart from the decoding
    walsender and the worker competing for the same two cores."""
    install_slot(settings, engine)
    try:
        settle(url)
        tps, transactions = pgbench(url, script, rows, seconds)
        retained = slot_position(url, settings.slot_name).retained
    finally:
        drop_slot(url, settings, engine)
    return Run(tps, transactions, wal_behind=retained)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--capture",
        choices=("changelog", "logical"),
        default="changelog",
        help="capture mode to measure (default changelog)",
    )
    parser.add_argument(
        "--seconds", type=int, default=15, help="length of each pgbench run (default 15)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="baseline/capture pairs; medians are reported (default 2)",
    )
    parser.add_argument(
        "--rows", type=int, default=100_000, help="rows in the legacy table (default 100000)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="seconds of unmeasured pgbench before the first run (default 3)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=500,
        help="the worker's batch size, CDC_BATCH_SIZE (default 500)",
    )
    parser.add_argument(
        "--poll-interval",
        default="0.2",
        help="the worker's CDC_POLL_INTERVAL in seconds (default 0.2, as shipped)",
    )
    parser.add_argument(
        "--no-triggers-only",
        "--no-slot-only",
        dest="no_info_run",
        action="store_true",
        help="skip the extra run in each round: triggers but no worker "
        "(changelog), slot but no worker (logical)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="longest wait for the worker to empty the log (changelog) or "
        "acknowledge every change (logical) after a run",
    )
    args = parser.parse_args()
    logical = args.capture == "logical"
    target = TARGET_RATIOS[args.capture]
    with_capture = "slot + worker" if logical else "triggers + worker"
    info_name = "slot only" if logical else "triggers only"

    baselines: list[Run] = []
    captures: list[Run] = []
    info_runs: list[Run] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        scratch_database() as url,
        database_slots_dropped(url),
    ):
        script = Path(tmp) / "update.sql"
        script.write_text(PGBENCH_SCRIPT)
        if logical:
            settings = logical_settings(url, args.batch_size, args.poll_interval)
        else:
            settings = capture_settings(
                url, bus="null", batch_size=str(args.batch_size), poll_interval=args.poll_interval
            )
        engine = prepare(settings, with_triggers=False)
        try:
            seed_legacy(url, args.rows)
            if logical:
                print(
                    f"logical capture overhead: pgbench single-row updates, {CLIENTS} clients, "
                    f"{args.rows:,} rows, {args.seconds}s per run, {args.rounds} round(s), "
                    f"worker batch {args.batch_size}, poll {args.poll_interval}s; slot "
                    f"{settings.slot_name}, publication {settings.publication_name}"
                )
            else:
                print(
                    f"trigger overhead: pgbench single-row updates, {CLIENTS} clients, "
                    f"{args.rows:,} rows, {args.seconds}s per run, {args.rounds} round(s), "
                    f"worker batch {args.batch_size}, poll {args.poll_interval}s"
                )
            if args.warmup:
                pgbench(url, script, args.rows, args.warmup)
            for round_number in range(1, args.rounds + 1):
                base = baseline_run(url, script, args.rows, args.seconds)
                baselines.append(base)
                if logical:
                    capture = logical_capture_run(
                        url, settings, engine, script, args.rows, args.seconds, args.drain_timeout
                    )
                else:
                    capture = capture_run(
                        url, settings, engine, script, args.rows, args.seconds, args.drain_timeout
                    )
                captures.append(capture)
                line = (
                    f"  round {round_number}: baseline {base.tps:,.0f} tps, "
                    f"{with_capture} {capture.tps:,.0f} tps "
                    f"(ratio {capture.tps / base.tps:.2f})"
                )
                if not args.no_info_run:
                    if logical:
                        alone = slot_only_run(
                            url, settings, engine, script, args.rows, args.seconds
                        )
                    else:
                        alone = triggers_only_run(
                            url, settings, engine, script, args.rows, args.seconds
                        )
                    info_runs.append(alone)
                    line += f", {info_name} {alone.tps:,.0f} tps"
                    if logical:
                        line += f" (WAL retained {alone.wal_behind / 2**20:,.0f} MB)"
                print(line)
                if logical:
                    sender = (
                        ""
                        if capture.walsender_cpu is None
                        else f", walsender {capture.walsender_cpu:.0%} of a core"
                    )
                    print(
                        f"    worker: {capture.captured:,} of {capture.transactions:,} changes "
                        f"acknowledged during the run in {capture.batches:,} batches, "
                        f"{capture.worker_cpu:.0%} of a core{sender}; behind by "
                        f"{capture.backlog:,} changes ({capture.wal_behind / 2**20:.1f} MB "
                        f"of WAL) at the end, caught up in {capture.drain_seconds:.2f}s",
                        flush=True,
                    )
                else:
                    print(
                        f"    worker: {capture.captured:,} of {capture.transactions:,} changes "
                        f"acknowledged during the run in {capture.batches:,} batches, "
                        f"{capture.worker_cpu:.0%} of a core; backlog {capture.backlog:,} at "
                        f"the end, drained in {capture.drain_seconds:.2f}s"
                    )
        finally:
            engine.dispose()

    backlog = median([run.backlog for run in captures])
    kept_up = median([run.captured / run.transactions for run in captures])
    baseline_tps = median([r.tps for r in baselines])
    figures = [
        Figure(
            f"updates/s, {with_capture}",
            median([r.tps for r in captures]),
            baseline_tps,
            "tps",
            None,
            target,
        )
    ]
    if info_runs:
        figures.append(
            Figure(
                f"updates/s, {info_name} (info)",
                median([r.tps for r in info_runs]),
                baseline_tps,
                "tps",
            )
        )
    if logical:
        print_table(
            "legacy updates/s with logical capture vs without (baseline: no slot, no "
            "publication, no worker; median of rounds)",
            figures,
        )
        senders = [r.walsender_cpu for r in captures if r.walsender_cpu is not None]
        sender = f", walsender {median(senders):.0%} of a core" if senders else ""
        print(
            f"behind at the end of a run (median): {backlog:,.0f} changes, "
            f"{median([r.wal_behind for r in captures]) / 2**20:.1f} MB of WAL; the worker "
            f"had acknowledged {kept_up:.1%} of the changes by then; caught up after the run "
            f"in {median([r.drain_seconds for r in captures]):.2f}s; worker "
            f"{median([r.worker_cpu for r in captures]):.0%} of a core{sender}"
        )
        if info_runs:
            print(
                f"WAL retained by the slot alone at the end of a run (median): "
                f"{median([r.wal_behind for r in info_runs]) / 2**20:,.0f} MB"
            )
    else:
        print_table(
            "legacy updates/s with capture vs without (baseline: no triggers, no "
            "worker; median of rounds)",
            figures,
        )
        print(
            f"backlog at the end of a run (median): {backlog:,.0f} changes; the worker had "
            f"acknowledged {kept_up:.1%} of the changes by then; drain after the run "
            f"{median([r.drain_seconds for r in captures]):.2f}s"
        )


if __name__ == "__main__":
    main()

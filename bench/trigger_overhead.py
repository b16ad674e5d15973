"""Trigger overhead: legacy write throughput (pgbench, single-row updates, 2 clients) with no
capture, against the same load with the capture triggers installed and the worker draining
the change log at the same time (``Worker.run`` in a thread, NullPublisher).

Baseline and capture runs alternate; medians are reported. Target: capture at least 0.75 of
the baseline's transactions/s. The change-log backlog left when pgbench stops shows whether the
worker kept up.
"""

from __future__ import annotations

import argparse
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

from cdc.publishers.file import NullPublisher
from cdc.settings import Settings

TARGET_RATIO = 0.75
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


def pgbench_path() -> str:
    found = shutil.which("pgbench") or "/usr/bin/pgbench"
    if not Path(found).exists():
        raise SystemExit("pgbench not found; install postgresql-client")
    return found


def pgbench(url: URL, script: Path, rows: int, seconds: int) -> tuple[float, int]:
    """Run pgbench for ``seconds``; its tps (without connection time) and transactions."""
    command = [
        pgbench_path(), "--no-vacuum", "--client", str(CLIENTS), "--jobs", str(CLIENTS),
        "--time", str(seconds), "--define", f"rows={rows}", "--file", str(script), libpq(url),
    ]
    done = subprocess.run(command, capture_output=True, text=True,
                          timeout=seconds + 60, check=False)
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


def triggers_only_run(url: URL, settings: Settings, engine: Engine, script: Path, rows: int,
                      seconds: int) -> Run:
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


def capture_run(url: URL, settings: Settings, engine: Engine, script: Path, rows: int,
                seconds: int, drain_timeout: float) -> Run:
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
            raise SystemExit(f"the worker captured {worker.stats.changes} changes for "
                             f"{transactions} updates")
    finally:
        drop_triggers(settings, engine)
    return Run(tps, transactions, backlog, captured, drain, batches, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15,
                        help="length of each pgbench run (default 15)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="baseline/capture pairs; medians are reported (default 2)")
    parser.add_argument("--rows", type=int, default=100_000,
                        help="rows in the legacy table (default 100000)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="seconds of unmeasured pgbench before the first run (default 3)")
    parser.add_argument("--batch-size", type=int, default=500,
                        help="the worker's batch size, CDC_BATCH_SIZE (default 500)")
    parser.add_argument("--poll-interval", default="0.2",
                        help="the worker's CDC_POLL_INTERVAL in seconds (default 0.2, as shipped)")
    parser.add_argument("--no-triggers-only", action="store_true",
                        help="skip the extra run with triggers but no worker in each round")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="longest wait for the worker to empty the log after a run")
    args = parser.parse_args()

    baselines: list[Run] = []
    captures: list[Run] = []
    triggers_only: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp, scratch_database() as url:
        script = Path(tmp) / "update.sql"
        script.write_text(PGBENCH_SCRIPT)
        settings = capture_settings(url, bus="null", batch_size=str(args.batch_size),
                                    poll_interval=args.poll_interval)
        engine = prepare(settings, with_triggers=False)
        try:
            seed_legacy(url, args.rows)
            print(f"trigger overhead: pgbench single-row updates, {CLIENTS} clients, "
                  f"{args.rows:,} rows, {args.seconds}s per run, {args.rounds} round(s), "
                  f"worker batch {args.batch_size}, poll {args.poll_interval}s")
            if args.warmup:
                pgbench(url, script, args.rows, args.warmup)
            for round_number in range(1, args.rounds + 1):
                base = baseline_run(url, script, args.rows, args.seconds)
                baselines.append(base)
                capture = capture_run(url, settings, engine, script, args.rows, args.seconds,
                                      args.drain_timeout)
                captures.append(capture)
                line = (f"  round {round_number}: baseline {base.tps:,.0f} tps, "
                        f"triggers + worker {capture.tps:,.0f} tps "
                        f"(ratio {capture.tps / base.tps:.2f})")
                if not args.no_triggers_only:
                    alone = triggers_only_run(url, settings, engine, script, args.rows,
                                              args.seconds)
                    triggers_only.append(alone)
                    line += f", triggers only {alone.tps:,.0f} tps"
                print(line)
                print(f"    worker: {capture.captured:,} of {capture.transactions:,} changes "
                      f"acknowledged during the run in {capture.batches:,} batches, "
                      f"{capture.worker_cpu:.0%} of a core; backlog {capture.backlog:,} at the "
                      f"end, drained in {capture.drain_seconds:.2f}s")
        finally:
            engine.dispose()

    backlog = median([run.backlog for run in captures])
    kept_up = median([run.captured / run.transactions for run in captures])
    baseline_tps = median([r.tps for r in baselines])
    figures = [Figure("updates/s, triggers + worker", median([r.tps for r in captures]),
                      baseline_tps, "tps", None, TARGET_RATIO)]
    if triggers_only:
        figures.append(Figure("updates/s, triggers only (info)",
                              median([r.tps for r in triggers_only]), baseline_tps, "tps"))
    print_table("legacy updates/s with capture vs without (baseline: no triggers, no worker; "
                "median of rounds)", figures)
    print(f"backlog at the end of a run (median): {backlog:,.0f} changes; the worker had "
          f"acknowledged {kept_up:.1%} of the changes by then; drain after the run "
          f"{median([r.drain_seconds for r in captures]):.2f}s")


if __name__ == "__main__":
    main()

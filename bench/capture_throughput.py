"""Capture throughput: changes/s from the change log to the NullPublisher through the real
pipeline (``Worker.step()``: ChangeLogSource.read -> event building -> publish -> ack), divided
by a bare SQL loop that reads and deletes the same rows with the same batch size.

The change log is filled through the real capture triggers, identically before each side.
Targets: at least 50,000 changes/s, and at least half the bare loop's rate.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats

import psycopg
from common import (
    Figure,
    capture_settings,
    changelog_count,
    fill_changelog,
    libpq,
    median,
    new_worker,
    prepare,
    print_table,
    scratch_database,
    timed,
)
from sqlalchemy.engine import URL

from cdc.bus.publishers.file import NullPublisher
from cdc.capture.worker import tune_garbage_collector
from cdc.core import database

TARGET_RATE = 50_000
TARGET_RATIO = 0.5
# The same statements as ChangeLogSource, run bare.
SELECT = (
    "SELECT id, table_name, op, before::text, after::text, txid, origin, captured_at "
    "FROM cdc.changelog ORDER BY id LIMIT %s"
)
DELETE = "DELETE FROM cdc.changelog WHERE id = ANY(%s)"


def bare_loop(url: URL, batch_size: int, expected: int) -> float:
    """Seconds for a plain psycopg loop to read (into Python) and delete every row."""
    with psycopg.connect(libpq(url)) as conn:
        conn.execute("SELECT 1").fetchall()
        conn.commit()
        seen = 0

        def drain() -> None:
            nonlocal seen
            while True:
                rows = conn.execute(SELECT, (batch_size,)).fetchall()
                if not rows:
                    conn.commit()
                    return
                conn.execute(DELETE, ([row[0] for row in rows],))
                conn.commit()
                seen += len(rows)

        seconds = timed(drain)
    if seen != expected:
        raise SystemExit(f"bare loop read {seen} changes, expected {expected}")
    return seconds


def worker_loop(
    url: URL, batch_size: int, expected: int, profile: cProfile.Profile | None = None
) -> float:
    """Seconds for ``Worker.step()`` to drain the change log into the NullPublisher."""
    settings = capture_settings(url, bus="null", batch_size=str(batch_size))
    engine = database.connect(settings)
    publisher = NullPublisher()
    worker = new_worker(settings, engine, publisher)
    with engine.connect():
        pass  # open the pooled connection outside the timing, as the bare loop does
    tune_garbage_collector()  # as Worker.run() does before its first batch

    def drain() -> None:
        while worker.step():
            pass

    try:
        if profile is not None:
            profile.enable()
        seconds = timed(drain)
    finally:
        if profile is not None:
            profile.disable()
        engine.dispose()
    if worker.stats.changes != expected or publisher.accepted != expected:
        raise SystemExit(
            f"worker captured {worker.stats.changes} changes and published "
            f"{publisher.accepted}, expected {expected}"
        )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--changes", type=int, default=100_000, help="change-log rows per run (default 100000)"
    )
    parser.add_argument(
        "--batch-sizes",
        default="500,2000",
        help="comma-separated batch sizes to compare (default 500,2000)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="bare/worker pairs per batch size; medians are reported (default 2)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the worker side with cProfile and print the top functions",
    )
    parser.add_argument(
        "--profile-sort",
        default="tottime",
        choices=["tottime", "cumulative"],
        help="order of the profile: own time (default) or cumulative time",
    )
    args = parser.parse_args()
    batch_sizes = [int(part) for part in args.batch_sizes.split(",") if part.strip()]

    figures: list[Figure] = []
    profile = cProfile.Profile() if args.profile else None
    with scratch_database() as url:
        settings = capture_settings(url, bus="null")
        prepare(settings).dispose()
        print(
            f"capture throughput: {args.changes:,} changes per run "
            f"(half inserts, half updates), {args.rounds} round(s) per batch size"
        )
        for batch_size in batch_sizes:
            bare: list[float] = []
            captured: list[float] = []
            for round_number in range(args.rounds):
                # Each side gets its own identical fill; which goes first alternates by round,
                # so drift on a noisy machine hits both alike.
                for side in ("bare", "worker") if round_number % 2 == 0 else ("worker", "bare"):
                    fill_changelog(url, args.changes)
                    if side == "bare":
                        seconds = bare_loop(url, batch_size, args.changes)
                        bare.append(args.changes / seconds)
                    else:
                        seconds = worker_loop(url, batch_size, args.changes, profile)
                        captured.append(args.changes / seconds)
                    if changelog_count(url):
                        raise SystemExit(f"the change log is not empty after the {side} run")
            print(
                f"  batch {batch_size}: bare "
                + ", ".join(f"{r:,.0f}" for r in bare)
                + " /s; worker "
                + ", ".join(f"{r:,.0f}" for r in captured)
                + " /s; ratios "
                + ", ".join(f"{w / b:.2f}" for w, b in zip(captured, bare, strict=True))
            )
            figures.append(
                Figure(
                    f"worker, batch {batch_size}",
                    median(captured),
                    median(bare),
                    "changes/s",
                    TARGET_RATE,
                    TARGET_RATIO,
                )
            )
    print_table(
        "changes/s, Worker.step() -> NullPublisher vs bare SELECT+DELETE loop (median of rounds)",
        figures,
    )
    for figure in figures:
        assert figure.baseline is not None
        worker_us, bare_us = 1e6 / figure.value, 1e6 / figure.baseline
        print(
            f"{figure.name}: {worker_us:.1f} us per change against {bare_us:.1f} us bare, "
            f"so the pipeline adds {worker_us - bare_us:.1f} us per change"
        )
    if profile is not None:
        print(f"\nworker side, cProfile, top 25 by {args.profile_sort}:")
        pstats.Stats(profile).sort_stats(args.profile_sort).print_stats(25)


if __name__ == "__main__":
    main()

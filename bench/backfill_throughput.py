"""Backfill throughput: rows/s that ``cdc backfill`` publishes to the null bus, divided by
``COPY (SELECT * FROM the table) TO STDOUT`` of the same table in the same run; and the
backfill's peak memory (RSS) at two table sizes, which should not grow with the table.

Each backfill runs as the real command in a child process (``cdc backfill --chunk-size N``,
CDC_BUS=null, changelog mode with its triggers installed); its rate is the rows over the time
between the run's start and finish as the state table records them (process start-up is not
counted), and its peak RSS is the child's ``ru_maxrss``.

Targets: at least 50,000 rows/s and a ratio of at least 0.3; peak memory flat.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime

import psycopg
from common import (
    LEGACY_TABLE,
    Figure,
    capture_settings,
    libpq,
    median,
    prepare,
    print_table,
    scratch_database,
    seed_legacy,
)
from sqlalchemy.engine import URL

TARGET_RATE = 50_000
TARGET_RATIO = 0.3


def copy_seconds(url: URL) -> float:
    """Time to stream the whole table out of the server with COPY, as a client reads it."""
    with psycopg.connect(libpq(url)) as conn:
        started = time.perf_counter()
        with conn.cursor().copy(f"COPY (SELECT * FROM {LEGACY_TABLE}) TO STDOUT") as copy:
            for _ in copy:
                pass
        return time.perf_counter() - started


def backfill(url: URL, chunk_size: int) -> tuple[float, int, float]:
    """Run ``cdc backfill`` in a child; (rows/s, rows, peak RSS of the child in MiB)."""
    env = {
        **os.environ,
        "CDC_DATABASE_URL": url.render_as_string(hide_password=False),
        "CDC_TABLES": LEGACY_TABLE,
        "CDC_BUS": "null",
        "CDC_LOG_LEVEL": "WARNING",
    }
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cdc",
                "backfill",
                LEGACY_TABLE,
                "--chunk-size",
                str(chunk_size),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        # wait4: this child's own resource usage, whatever other children did before
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"cdc backfill failed:\n{errors.read().decode()}")
    peak_kib = usage.ru_maxrss
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(
            "SELECT rows_done, started_at, finished_at FROM cdc.backfills ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    rows, started, finished = int(row[0]), row[1], row[2]
    assert isinstance(started, datetime) and isinstance(finished, datetime)
    seconds = (finished - started).total_seconds()
    return rows / seconds, rows, peak_kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the timed table")
    parser.add_argument(
        "--large",
        type=int,
        default=1_000_000,
        help="rows of the larger table for the memory figure",
    )
    parser.add_argument(
        "--small", type=int, default=100_000, help="rows of the smaller table for the memory figure"
    )
    parser.add_argument("--chunk-size", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    figures: list[Figure] = []
    with scratch_database() as url:
        settings = capture_settings(url)
        prepare(settings)
        seed_legacy(url, args.rows)
        rates, copies = [], []
        for _ in range(args.repeat):
            copies.append(args.rows / copy_seconds(url))
            rate, _, _ = backfill(url, args.chunk_size)
            rates.append(rate)
        figures.append(
            Figure(
                f"backfill rows/s ({args.rows:,} rows) / COPY TO STDOUT",
                median(rates),
                median(copies),
                "rows/s",
                TARGET_RATE,
                TARGET_RATIO,
            )
        )
    # Memory: a fresh table (and a fresh child, so ru_maxrss is its own) per size.
    peaks: dict[int, float] = {}
    for size in sorted({args.small, args.large}):
        with scratch_database() as url:
            prepare(capture_settings(url))
            seed_legacy(url, size)
            _, rows, peak = backfill(url, args.chunk_size)
            assert rows == size, (rows, size)
            peaks[size] = peak
    small, large = peaks[args.small], peaks[args.large]
    figures.append(Figure(f"peak RSS, {args.small:,} rows", small, None, "MiB"))
    figures.append(Figure(f"peak RSS, {args.large:,} rows", large, small, "MiB"))
    print_table("Backfill", figures)
    print(
        f"peak RSS grew {large / small:.2f}x for {args.large / args.small:.0f}x the rows "
        "(flat is about 1.0)"
    )


if __name__ == "__main__":
    main()

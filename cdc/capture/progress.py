"""Backfill progress for an operator: a live bar in a terminal, periodic log lines elsewhere.

Progress is read from the ``backfills`` state table, so it shows the same figures whichever
worker does the work (this process, or a running ``cdc run`` that holds the lease).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence

from cdc.capture.backfill.runs import Run

log = logging.getLogger("cdc.backfill")
LOG_EVERY = 10.0  # seconds between progress lines when not in a terminal


def follow(
    read: Callable[[], Sequence[Run]], stop: threading.Event, every: float = 0.5
) -> list[Run]:
    """Show the runs' progress until none is running or ``stop`` is set; the last reading."""
    if sys.stdout.isatty():
        return _bars(read, stop, every)
    return _lines(read, stop, every)


def _running(runs: Sequence[Run]) -> bool:
    return any(r.status == "running" for r in runs)


def _bars(read: Callable[[], Sequence[Run]], stop: threading.Event, every: float) -> list[Run]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    runs = list(read())
    with Progress(*columns) as bars:
        tasks = {
            r.id: bars.add_task(
                f"#{r.id} {r.table}", total=r.rows_total or None, completed=r.rows_done
            )
            for r in runs
        }
        while True:
            for run in runs:
                bars.update(
                    tasks[run.id],
                    completed=run.rows_done,
                    description=f"#{run.id} {run.table} ({run.status})",
                )
            if not _running(runs) or stop.wait(every):
                return runs
            runs = list(read())


def _lines(read: Callable[[], Sequence[Run]], stop: threading.Event, every: float) -> list[Run]:
    runs = list(read())
    started = time.monotonic()
    first = {r.id: r.rows_done for r in runs}
    logged = started
    while _running(runs) and not stop.wait(every):
        runs = list(read())
        now = time.monotonic()
        if now - logged >= LOG_EVERY:
            logged = now
            for run in runs:
                log.info("%s", describe(run, first.get(run.id, 0), now - started))
    for run in runs:
        log.info("%s", describe(run, first.get(run.id, 0), time.monotonic() - started))
    return runs


def describe(run: Run, done_at_start: int, seconds: float) -> str:
    """One line: rows done of total, rate since we began watching, time left."""
    rate = (run.rows_done - done_at_start) / seconds if seconds > 0 else 0.0
    total = run.rows_total or 0
    text = f"backfill #{run.id} of {run.table}: {run.status}, {run.rows_done}"
    if total:
        text += f" of {total} rows ({100 * run.rows_done / total:.1f}%)"
    else:
        text += " rows"
    text += f", {rate:,.0f} rows/s"
    if run.status == "running" and rate > 0 and total > run.rows_done:
        text += f", about {(total - run.rows_done) / rate:,.0f}s left"
    return text

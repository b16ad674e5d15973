"""Backfill runs: the rows of the ``backfills`` state table.

The operator starts, resumes, cancels and lists runs; the worker that holds the capture lease
reads the running ones and records each chunk's progress in the same row. Progress therefore
reads the same whichever process does the chunks, and a killed run resumes after the last
chunk the bus accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Engine, select

from cdc.capture.backfill.pages import TableReader
from cdc.capture.catalog import TableInfo
from cdc.core.dialects import dialect_of
from cdc.core.errors import CdcError
from cdc.core.state import StateTables


@dataclass
class Run:
    """One backfill of one table (a row of the ``backfills`` state table)."""

    id: int
    table: str
    where: str | None
    chunk_size: int
    rate: float | None
    last_key: list[Any] | None
    rows_done: int = 0
    chunks_done: int = 0
    rows_total: int | None = None
    status: str = "running"
    started_at: datetime | str | None = None
    updated_at: datetime | str | None = None


# -- the operator's side: start, cancel, list ----------------------------------------------


def start(
    engine: Engine,
    state: StateTables,
    info: TableInfo,
    where: str | None,
    chunk_size: int,
    rate: float | None,
) -> tuple[Run, bool]:
    """A running backfill of the table, resumed if one with the same ``where`` exists, else
    a new one; and whether it was resumed."""
    table = state.backfills
    name = info.ref.qualified
    with engine.begin() as connection:
        row = (
            connection.execute(
                select(table).where(table.c.table_name == name, table.c.status == "running")
            )
            .mappings()
            .first()
        )
        if row is not None:
            run = run_of(row)
            if (run.where or None) != (where or None):
                raise CdcError(
                    f"backfill #{run.id} of {name} is running with --where {run.where!r}; let it "
                    f"finish, or cancel it first (cdc backfill --cancel {name})"
                )
            if run.chunk_size != chunk_size or run.rate != rate:
                connection.execute(
                    table.update()
                    .where(table.c.id == run.id)
                    .values(chunk_size=chunk_size, rate=rate)
                )
                run.chunk_size, run.rate = chunk_size, rate
            return run, True
        reader = TableReader(connection, info, where)
        try:
            total = reader.count(connection)
        except Exception as exc:
            raise CdcError(
                f"cannot read {name} with --where {where!r}: {str(exc).splitlines()[0]}"
            ) from None
        now = dialect_of(engine).now()
        new_id = connection.execute(
            table.insert()
            .values(
                table_name=name,
                where_clause=where or None,
                chunk_size=chunk_size,
                rate=rate,
                status="running",
                last_key=None,
                rows_total=total,
                rows_done=0,
                chunks_done=0,
                started_at=now,
                updated_at=now,
            )
            .returning(table.c.id)
        ).scalar_one()
    return Run(new_id, name, where or None, chunk_size, rate, None, 0, 0, total), False


def cancel(engine: Engine, state: StateTables, name: str) -> int:
    """Cancel the table's running backfill; how many were cancelled (0 or 1)."""
    table = state.backfills
    with engine.begin() as connection:
        result = connection.execute(
            table.update()
            .where(table.c.table_name == name, table.c.status == "running")
            .values(status="cancelled", updated_at=dialect_of(engine).now())
        )
    return int(result.rowcount)


def latest(engine: Engine, state: StateTables, limit: int = 50) -> list[Run]:
    """The last ``limit`` runs, newest first, whatever their status."""
    table = state.backfills
    query = select(table).order_by(table.c.id.desc()).limit(limit)
    with engine.connect() as connection:
        return [run_of(row) for row in connection.execute(query).mappings()]


def by_id(engine: Engine, state: StateTables, ids: Sequence[int]) -> list[Run]:
    """The runs with these ids, in id order."""
    table = state.backfills
    query = select(table).where(table.c.id.in_(list(ids))).order_by(table.c.id)
    with engine.connect() as connection:
        return [run_of(row) for row in connection.execute(query).mappings()]


# -- the worker's side: what to do, what was done ------------------------------------------


def running(engine: Engine, state: StateTables) -> list[Run]:
    """The running backfills, oldest first."""
    table = state.backfills
    with engine.connect() as connection:
        rows = (
            connection.execute(
                select(table).where(table.c.status == "running").order_by(table.c.id)
            )
            .mappings()
            .all()
        )
    return [run_of(row) for row in rows]


def record_progress(engine: Engine, state: StateTables, run: Run, done: bool) -> None:
    """Store the run's progress, and mark it done if ``done``. A run cancelled meanwhile stays
    cancelled: only a running row is updated."""
    table = state.backfills
    now = dialect_of(engine).now()
    values: dict[str, Any] = {
        "last_key": None if run.last_key is None else orjson.dumps(run.last_key).decode(),
        "rows_done": run.rows_done,
        "chunks_done": run.chunks_done,
        "updated_at": now,
    }
    if done:
        values.update(status="done", finished_at=now)
    with engine.begin() as connection:
        connection.execute(
            table.update().where(table.c.id == run.id, table.c.status == "running").values(**values)
        )


def record_failure(engine: Engine, state: StateTables, run: Run) -> None:
    table = state.backfills
    now = dialect_of(engine).now()
    with engine.begin() as connection:
        connection.execute(
            table.update()
            .where(table.c.id == run.id)
            .values(status="failed", updated_at=now, finished_at=now)
        )


def run_of(row: Any) -> Run:
    last = row["last_key"]
    return Run(
        row["id"],
        row["table_name"],
        row["where_clause"],
        row["chunk_size"],
        row["rate"],
        None if last is None else orjson.loads(last),
        row["rows_done"],
        row["chunks_done"],
        row["rows_total"],
        row["status"],
        row["started_at"],
        row["updated_at"],
    )

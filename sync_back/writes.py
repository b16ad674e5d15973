"""Writes: the events a segment applies -> runs of one shape, each sent as one statement.

A run is consecutive writes of one shape (table, operation, key columns, the columns bound), in
the events' order; the applier sends a run as one call with a parameter set per row, from a
statement built once per shape (``statements``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from sqlalchemy import Table
from sqlalchemy import types as sqltypes

from cdc.core.tables import TableRef
from sync_back.mapping import WriteOp
from sync_back.policy import version_text
from sync_back.rows import RowWrite
from sync_back.segments import Item


class Bound(NamedTuple):
    """A column a write binds, and whether its value is JSON text for a json column (then the
    database casts it: SQLAlchemy's JSON type would serialise it again, as a JSON string)."""

    column: str
    json_text: bool


class Shape(NamedTuple):
    """What one statement writes."""

    table: TableRef
    op: WriteOp
    key_columns: tuple[str, ...]
    bound: tuple[Bound, ...]  # the columns an upsert binds, in order; none for a delete


def runs(applied: list[Item], table: Table) -> Iterator[tuple[Shape, list[Item]]]:
    """Consecutive writes of one shape, in order."""
    shape: Shape | None = None
    run: list[Item] = []
    for item in applied:
        write = item.pending.write
        key_columns = tuple(write.key)
        if write.op == "delete":
            this = Shape(write.table, "delete", key_columns, ())
        else:
            bound = tuple(
                Bound(column, json_text(table, column, value))
                for column, value in write.values.items()
            )
            this = Shape(write.table, "upsert", key_columns, bound)
        if this != shape and run:
            assert shape is not None
            yield shape, run
            run = []
        shape = this
        run.append(item)
    if run:
        assert shape is not None
        yield shape, run


def json_text(table: Table, column: str, value: Any) -> bool:
    """Whether a value is JSON text for a json column."""
    return isinstance(value, str) and isinstance(table.c[column].type, sqltypes.JSON)


def parameters(shape: Shape, write: RowWrite) -> dict[str, Any]:
    """A write's parameter set for its shape's statement (``statements.Statements.write``)."""
    if shape.op == "delete":
        return {f"k_{j}": write.key[c] for j, c in enumerate(shape.key_columns)}
    return {f"v_{j}": write.values[b.column] for j, b in enumerate(shape.bound)}


def synced_version(write: RowWrite) -> str | None:
    """The version to remember as the one sync back wrote."""
    return None if write.version is None else version_text(write.version)

"""The schema history of captured tables: every shape a table has had (columns, types, key),
numbered from 1, each with the stream position from which it holds.

A change is converted by the version in effect at its position (the last one recorded before
it), never by what the catalog says when the worker happens to read it: a column whose type
changed while changes of the old type still wait in the stream keeps the old conversion for
those. The versions are written by the database in the DDL's own transaction (PostgreSQL's
event trigger, ``migrations/versions/0006_schema_history.py``), so they are there before any
change that follows them can be read. ``cdc setup`` records the baseline
(``CaptureDialect.follow_schema_changes``).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Connection, Engine, func, select

from cdc.capture.catalog import TableInfo, table_info
from cdc.capture.dialects.base import Shape
from cdc.core.catalog import shape_from_json
from cdc.core.dialects import dialect_of
from cdc.core.state import StateTables
from cdc.core.tables import TableRef


class Version(NamedTuple):
    number: int
    position: str  # holds for changes after this position
    shape: Shape
    info: TableInfo


def record(
    connection: Connection, state: StateTables, ref: TableRef, shape: Shape, position: str
) -> int | None:
    """Append ``shape`` as the table's next version unless it is its latest already; the new
    version's number, or None."""
    table = state.table_schemas
    latest = connection.execute(
        select(table.c.version, table.c.shape)
        .where(table.c.table_name == ref.qualified)
        .order_by(table.c.version.desc())
        .limit(1)
    ).first()
    if latest is not None and orjson.loads(latest.shape) == shape:
        return None
    version = 1 if latest is None else latest.version + 1
    connection.execute(
        table.insert().values(
            table_name=ref.qualified,
            version=version,
            position=position,
            shape=orjson.dumps(shape).decode(),
            recorded_at=dialect_of(connection).now(),
        )
    )
    return version


def latest_position(connection: Connection, state: StateTables) -> str:
    """The change-log position of the newest change written so far (a new version recorded by
    ``cdc setup`` holds from there: the changes already waiting were written before it)."""
    newest = connection.execute(select(func.max(state.changelog.c.id))).scalar()
    return "" if newest is None else f"{newest:020d}"


class SchemaHistory:
    """The versions of the tables a source meets, read once per table and extended by the
    ``schema`` changes the stream carries."""

    def __init__(self, engine: Engine, state: StateTables, default_schema: str) -> None:
        self.engine = engine
        self.state = state
        self.default_schema = default_schema
        self.dialect = dialect_of(engine)
        self._versions: dict[str, list[Version]] = {}
        self._positions: dict[str, list[str]] = {}

    def versions(self, name: str) -> list[Version]:
        found = self._versions.get(name)
        if found is None:
            table = self.state.table_schemas
            with self.engine.connect() as connection:
                rows = connection.execute(
                    select(table.c.version, table.c.position, table.c.shape)
                    .where(table.c.table_name == name)
                    .order_by(table.c.version)
                ).all()
            found = [
                self._version(name, row.version, row.position, orjson.loads(row.shape))
                for row in rows
            ]
            self._versions[name] = found
            self._positions[name] = [v.position for v in found]
        return found

    def _version(self, name: str, number: int, position: str, shape: Mapping[str, Any]) -> Version:
        ref = TableRef.parse(name, self.default_schema)
        info = table_info(shape_from_json(ref, shape, self.dialect), self.dialect, number)
        return Version(number, position, dict(shape), info)

    def in_effect(self, name: str, position: str) -> Version | None:
        """The version holding at ``position`` (the last one recorded at or before it); None
        when the table has no history."""
        versions = self.versions(name)
        if not versions:
            return None
        last = versions[-1]
        if position >= last.position:  # the common case: after the newest version
            return last
        index = bisect.bisect_right(self._positions[name], position) - 1
        return versions[max(index, 0)]

    def add(self, name: str, number: int, position: str, shape: Mapping[str, Any]) -> Version:
        """A version met in the stream: recorded by the database already (change log), or to
        be recorded with ``store`` once its batch is acknowledged (logical replication)."""
        versions = self.versions(name)
        for version in versions:
            if version.number == number:
                return version
        version = self._version(name, number, position, shape)
        at = bisect.bisect_right(self._positions[name], position)
        versions.insert(at, version)
        self._positions[name].insert(at, position)
        return version

    def store(self, connection: Connection, name: str, version: Version) -> None:
        """Record a version met in the stream (no-op when it is recorded already)."""
        table = self.state.table_schemas
        exists = connection.execute(
            select(table.c.version).where(
                table.c.table_name == name, table.c.version == version.number
            )
        ).first()
        if exists is None:
            connection.execute(
                table.insert().values(
                    table_name=name,
                    version=version.number,
                    position=version.position,
                    shape=orjson.dumps(version.shape).decode(),
                    recorded_at=dialect_of(connection).now(),
                )
            )

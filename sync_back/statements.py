"""Statements: what the applier sends, each built once per shape and then reused.

SQLAlchemy finds a reused statement compiled in its cache without walking a new one (most of a
statement's cost in Python). Legacy identifiers are quoted by SQLAlchemy; every value is a
bound parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Executable,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    select,
    tuple_,
    update,
)

from cdc.core.dialects import Dialect
from cdc.core.state import StateTables
from cdc.core.tables import TableRef
from sync_back.writes import Bound, Shape


def value(table: Table, bound: Bound, parameter: str) -> ColumnElement[Any]:
    """A legacy column's value, bound as ``parameter``."""
    if bound.json_text:
        # json columns arrive as JSON text (every digit kept): cast by the database, not
        # serialised again by SQLAlchemy's JSON type, which would store a JSON string.
        return cast(bindparam(parameter, type_=Text()), table.c[bound.column].type)
    return bindparam(parameter, type_=table.c[bound.column].type)


class Statements:
    def __init__(self, state: StateTables, dialect: Dialect) -> None:
        self.state = state
        self._insert = dialect.insert
        self._built: dict[tuple[Any, ...], Executable] = {}
        self._writes: dict[Shape, Executable] = {}

    def _once(self, key: tuple[Any, ...], build: Callable[[], Executable]) -> Executable:
        found = self._built.get(key)
        if found is None:
            found = self._built[key] = build()
        return found

    # -- sync back's own tables -------------------------------------------------------------

    def claim(self) -> Executable:
        """Claim event ids in the inbox; returns the ids this transaction claimed."""
        inbox = self.state.inbox
        return self._once(
            ("claim",),
            lambda: (
                self._insert(inbox)
                .on_conflict_do_nothing(index_elements=[inbox.c.event_id])
                .returning(inbox.c.event_id)
            ),
        )

    def outcome(self) -> Executable:
        inbox = self.state.inbox
        return self._once(
            ("outcome",),
            lambda: (
                update(inbox)
                .where(inbox.c.event_id == bindparam("e_id"))
                .values(outcome=bindparam("e_outcome"))
            ),
        )

    def park(self) -> Executable:
        conflicts = self.state.conflicts
        return self._once(
            ("park",),
            lambda: self._insert(conflicts).on_conflict_do_nothing(
                index_elements=[conflicts.c.event_id]
            ),
        )

    def synced(self) -> Executable:
        synced = self.state.synced_rows
        return self._once(
            ("synced",),
            lambda: select(synced.c.row_key, synced.c.version).where(
                synced.c.table_name == bindparam("s_table"),
                synced.c.row_key.in_(bindparam("s_keys", expanding=True)),
            ),
        )

    def remember(self) -> Executable:
        return self._once(("remember",), self._remember)

    def _remember(self) -> Executable:
        synced = self.state.synced_rows
        statement = self._insert(synced).values(
            table_name=bindparam("s_table"),
            row_key=bindparam("s_key"),
            version=bindparam("s_version"),
            event_id=bindparam("s_event"),
        )
        return statement.on_conflict_do_update(
            index_elements=[synced.c.table_name, synced.c.row_key],
            set_={"version": statement.excluded.version, "event_id": statement.excluded.event_id},
        ).returning(synced.c.row_key)

    def forget(self) -> Executable:
        synced = self.state.synced_rows
        return self._once(
            ("forget",),
            lambda: delete(synced).where(
                synced.c.table_name == bindparam("s_table"),
                synced.c.row_key == bindparam("s_key"),
            ),
        )

    # -- the legacy tables ------------------------------------------------------------------

    def lock(
        self, table: Table, ref: TableRef, key_columns: tuple[str, ...], versions: tuple[str, ...]
    ) -> Executable:
        """The rows of the keys in ``l_keys`` (key values, or tuples of them), key and version
        columns, in key order, ``FOR UPDATE``."""

        def build() -> Executable:
            keys = [table.c[c] for c in key_columns]
            where = (
                keys[0].in_(bindparam("l_keys", expanding=True))
                if len(keys) == 1
                else tuple_(*keys).in_(bindparam("l_keys", expanding=True))
            )
            columns = [*keys, *(table.c[c] for c in versions)]
            return select(*columns).where(where).order_by(*keys).with_for_update()

        return self._once(("lock", ref, key_columns, versions), build)

    def lock_one(
        self, table: Table, ref: TableRef, key_columns: tuple[str, ...], versions: tuple[str, ...]
    ) -> Executable:
        """The row of one key (``l_0``, ``l_1``, ...), compared as SQL compares, ``FOR UPDATE``."""

        def build() -> Executable:
            keys = [table.c[c] for c in key_columns]
            columns = [*keys, *(table.c[c] for c in versions)]
            return (
                select(*columns)
                .where(and_(*(column == bindparam(f"l_{j}") for j, column in enumerate(keys))))
                .with_for_update()
            )

        return self._once(("lock one", ref, key_columns, versions), build)

    def write(self, table: Table, shape: Shape) -> Executable:
        """A run's statement; ``writes.parameters`` gives each row's parameter set."""
        found = self._writes.get(shape)
        if found is None:
            build = self._delete if shape.op == "delete" else self._upsert
            found = self._writes[shape] = build(table, shape)
        return found

    def _delete(self, table: Table, shape: Shape) -> Executable:
        return delete(table).where(
            and_(*(table.c[c] == bindparam(f"k_{j}") for j, c in enumerate(shape.key_columns)))
        )

    def _upsert(self, table: Table, shape: Shape) -> Executable:
        # RETURNING has SQLAlchemy send a run as one multi-row INSERT ("insertmanyvalues").
        values = {b.column: value(table, b, f"v_{j}") for j, b in enumerate(shape.bound)}
        statement = self._insert(table).values(values)
        others = {
            b.column: statement.excluded[b.column]
            for b in shape.bound
            if b.column not in shape.key_columns
        }
        index_elements = [table.c[c] for c in shape.key_columns]
        upsert = (
            statement.on_conflict_do_update(index_elements=index_elements, set_=others)
            if others
            else statement.on_conflict_do_nothing(index_elements=index_elements)
        )
        return upsert.returning(index_elements[0])

"""Applies one event to the legacy database, exactly once, in one transaction.

The transaction claims the event id in the inbox (a duplicate is a no-op), reads the legacy
row's version under a row lock, asks the conflict policy, writes the mapped columns (and only
those; identifiers are quoted by SQLAlchemy, values bound as parameters), and records what it
did. It is tagged as written by sync back, so capture recognises these changes and does not
echo them onto the bus.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    MetaData,
    Table,
    Text,
    and_,
    cast,
    delete,
    literal,
    select,
    update,
)
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import NoSuchTableError

from cdc.errors import ConfigError
from cdc.events import TableRef, parse_iso
from cdc.origin import origin_tag
from cdc.state import StateTables
from sync_back.policy import Decision, decide, version_text

log = logging.getLogger(__name__)

ORIGIN = "sync_back"
Outcome = Literal["applied", "duplicate", "skip_stale", "skip_conflict", "parked"]
_OUTCOMES: dict[Decision, Outcome] = {
    "apply": "applied", "skip_stale": "skip_stale", "skip_conflict": "skip_conflict",
    "park": "parked",
}


@dataclass(frozen=True, slots=True)
class Pending:
    """A write to apply, with what the inbox and the policy need besides."""

    write: Any  # sync_back.rows.RowWrite
    detail_type: str
    version_column: str | None
    body: str


class Applier:
    def __init__(self, engine: Engine, state: StateTables, logical: bool = False) -> None:
        self.engine = engine
        self.state = state
        self.logical = logical
        self._tables: dict[TableRef, Table] = {}
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def table(self, ref: TableRef) -> Table:
        found = self._tables.get(ref)
        if found is None:
            schema = None if self.engine.dialect.name == "sqlite" and ref.schema == "main" else ref.schema
            try:
                found = Table(ref.name, MetaData(), schema=schema, autoload_with=self.engine)
            except NoSuchTableError:
                raise ConfigError("CDC_CONFIG", f"sync_back maps to {ref.qualified}, which does "
                                  "not exist in the legacy database") from None
            self._tables[ref] = found
        return found

    def check_columns(self, ref: TableRef, columns: list[str]) -> None:
        """Refuse, at start-up, a mapping that names columns the legacy table does not have."""
        table = self.table(ref)
        missing = [c for c in columns if c not in table.c]
        if missing:
            raise ConfigError("CDC_CONFIG", f"sync_back maps columns {missing} that "
                              f"{ref.qualified} does not have")

    def apply(self, write: Any, detail_type: str, version_column: str | None, body: str) -> Outcome:
        """Apply one ``sync_back.rows.RowWrite`` in a transaction of its own."""
        return self.apply_many([Pending(write, detail_type, version_column, body)])[0]

    def apply_many(self, pending: Sequence[Pending]) -> list[Outcome]:
        """Apply writes in one transaction (one commit for a received batch: the commit is the
        cost that counts). All or nothing: on any error nothing of the batch stays, and the
        caller may apply the writes one by one to find the one at fault."""
        now: Any = datetime.now(UTC)
        if self.engine.dialect.name == "sqlite":
            now = now.isoformat()
        with self.engine.begin() as connection, origin_tag(connection, ORIGIN, logical=self.logical):
            outcomes = [self._apply_in(connection, item, now) for item in pending]
        for item, outcome in zip(pending, outcomes, strict=True):
            if outcome != "applied":
                log.info("event %s for %s: %s", item.write.event_id, item.write.table.qualified,
                         outcome)
        return outcomes

    def _apply_in(self, connection: Connection, item: Pending, now: Any) -> Outcome:
        write, state = item.write, self.state
        table = self.table(write.table)
        key_text = orjson.dumps(write.key, default=str, option=orjson.OPT_SORT_KEYS).decode()
        claimed = connection.execute(
            self._insert(state.inbox).values(
                event_id=write.event_id, detail_type=item.detail_type,
                table_name=write.table.qualified, outcome="claimed", applied_at=now,
            ).on_conflict_do_nothing(index_elements=[state.inbox.c.event_id])
            .returning(state.inbox.c.event_id)
        ).first()
        if claimed is None:
            return "duplicate"
        version_column = item.version_column
        where = and_(*(table.c[column] == value for column, value in write.key.items()))
        probe = table.c[version_column] if version_column else table.c[next(iter(write.key))]
        current = connection.execute(select(probe).where(where).with_for_update()).first()
        legacy_version = current[0] if current is not None and version_column else None
        if isinstance(legacy_version, str) and isinstance(write.version, datetime):
            legacy_version = parse_iso(legacy_version)  # SQLite keeps timestamps as text
        synced = connection.execute(
            select(state.synced_rows.c.version).where(
                state.synced_rows.c.table_name == write.table.qualified,
                state.synced_rows.c.row_key == key_text,
            )
        ).scalar()
        decision = decide(write.policy, current is not None, legacy_version, write.version, synced)
        if decision == "apply":
            self._write(connection, table, write, where)
            self._remember(connection, write, key_text)
        elif decision == "park":
            connection.execute(self._insert(state.conflicts).values(
                event_id=write.event_id, table_name=write.table.qualified, row_key=key_text,
                reason=(f"legacy version {version_text(legacy_version)}, event version "
                        f"{version_text(write.version)}, policy {write.policy}"),
                body=item.body, created_at=now,
            ).on_conflict_do_nothing(index_elements=[state.conflicts.c.event_id]))
        outcome = _OUTCOMES[decision]
        connection.execute(update(state.inbox).where(state.inbox.c.event_id == write.event_id)
                           .values(outcome=outcome))
        return outcome

    def _write(self, connection: Any, table: Table, write: Any, where: Any) -> None:
        if write.op == "delete":
            connection.execute(delete(table).where(where))
            return
        values = {
            # json columns arrive as JSON text (every digit kept): cast by the database, not
            # serialised again by SQLAlchemy's JSON type, which would store a JSON string.
            column: cast(literal(value, Text()), table.c[column].type)
            if isinstance(value, str) and isinstance(table.c[column].type, sqltypes.JSON)
            else value
            for column, value in write.values.items()
        }
        statement = self._insert(table).values(**values)
        others = {c: statement.excluded[c] for c in write.values if c not in write.key}
        key_columns = [table.c[c] for c in write.key]
        if others:
            connection.execute(statement.on_conflict_do_update(index_elements=key_columns,
                                                               set_=others))
        else:
            connection.execute(statement.on_conflict_do_nothing(index_elements=key_columns))

    def _remember(self, connection: Any, write: Any, key_text: str) -> None:
        synced = self.state.synced_rows
        if write.op == "delete":
            connection.execute(delete(synced).where(synced.c.table_name == write.table.qualified,
                                                    synced.c.row_key == key_text))
            return
        version = None if write.version is None else version_text(write.version)
        statement = self._insert(synced).values(table_name=write.table.qualified, row_key=key_text,
                                                version=version, event_id=write.event_id)
        connection.execute(statement.on_conflict_do_update(
            index_elements=[synced.c.table_name, synced.c.row_key],
            set_={"version": statement.excluded.version, "event_id": statement.excluded.event_id},
        ))

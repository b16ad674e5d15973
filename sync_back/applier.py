"""Applies events to the legacy database, exactly once, a received batch in one transaction.

For each event the transaction claims its id in the inbox (a duplicate is a no-op), reads the
legacy row's version under a row lock, asks the conflict policy, writes the mapped columns (and
only those; identifiers are quoted by SQLAlchemy, values bound as parameters), and records
what it did. It is tagged as written by sync back, so capture recognises these changes and does
not echo them onto the bus.

A batch costs a handful of statements, not a handful per event: one inbox claim for all its
events (duplicates, also within the batch, fall out), then per *segment* one locking read of
the legacy rows, a read of the versions sync back last wrote (only for rows that exist under a
policy that asks whether the legacy application changed them), one multi-row upsert per run of
writes of one shape, one multi-row upsert of the synced versions; and at the end one update of
the outcomes that are not ``applied``. A segment is a run of consecutive events on one table
whose keys all differ: the next event for a key already in the segment, or an event for another
table, starts a new one. So every decision reads the row as the events before it left it, as
when each event was applied on its own, and the writes keep the events' order. A batch the
database refuses is rolled back whole; the consumer then applies its events one by one.

One difference with one event at a time: within a segment the rows are read before any of them
is written, so a legacy trigger that changes *another row of the same table* when one of the
segment is written is not seen by that row's decision. (Triggers and cascades into other tables
are seen: a table change ends the segment.)
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, Engine, MetaData, Table
from sqlalchemy.exc import DBAPIError, NoSuchTableError

from cdc.bus.events import parse_iso
from cdc.core.dialects import dialect_of
from cdc.core.errors import ConfigError
from cdc.core.state import StateTables
from cdc.core.tables import TableRef
from sync_back import refusals
from sync_back.policy import Decision, decide, reads_synced_version, version_text
from sync_back.rows import Pending
from sync_back.segments import Item, Segment, key_text, segments
from sync_back.statements import Statements
from sync_back.writes import parameters, runs, synced_version

log = logging.getLogger(__name__)

ORIGIN = "sync_back"
Outcome = Literal["applied", "duplicate", "skip_stale", "skip_conflict", "parked"]
_OUTCOMES: dict[Decision, Outcome] = {
    "apply": "applied",
    "skip_stale": "skip_stale",
    "skip_conflict": "skip_conflict",
    "park": "parked",
}
# A connection is kept from one batch to the next for this long: taking it from the pool each
# time costs a ping (pool_pre_ping) and the pool's bookkeeping, a round trip per batch. One idle
# for longer goes back to the pool, and the next batch takes one pinged.
KEEP_CONNECTION_SECONDS = 2.0
# The outcome an inbox claim is written with; the few others are set once decided (the
# transaction commits all or nothing, so nobody ever reads a claim before its outcome).
_PROVISIONAL: Outcome = "applied"


class Applier:
    def __init__(self, engine: Engine, state: StateTables, logical: bool = False) -> None:
        self.engine = engine
        self.state = state
        self.logical = logical
        self._tables: dict[TableRef, Table] = {}
        self.dialect = dialect_of(engine)
        self._statements = Statements(state, self.dialect)
        self._kept: Connection | None = None
        self._kept_until = 0.0
        self._release_kept: Callable[[], Any] = lambda: None

    def table(self, ref: TableRef) -> Table:
        found = self._tables.get(ref)
        if found is None:
            schema = self.dialect.reflection_schema(ref.schema)
            try:
                found = Table(ref.name, MetaData(), schema=schema, autoload_with=self.engine)
            except NoSuchTableError:
                raise ConfigError(
                    "CDC_CONFIG",
                    f"sync_back maps to {ref.qualified}, which does "
                    "not exist in the legacy database",
                ) from None
            self._tables[ref] = found
        return found

    def check_columns(self, ref: TableRef, columns: list[str]) -> None:
        """Refuse, at start-up, a mapping that names columns the legacy table does not have."""
        table = self.table(ref)
        missing = [c for c in columns if c not in table.c]
        if missing:
            raise ConfigError(
                "CDC_CONFIG", f"sync_back maps columns {missing} that {ref.qualified} does not have"
            )

    def apply_many(self, pending: Sequence[Pending]) -> list[Outcome]:
        """Apply writes in one transaction (one commit for a received batch: the commit is the
        cost that counts), in their order. All or nothing: on any error nothing of the batch
        stays, and the caller may apply the writes one by one to find the one at fault."""
        now = self.dialect.now()
        connection = self._connection()
        try:
            with (
                connection.begin(),
                self.dialect.origin_tag(connection, ORIGIN, logical=self.logical, to_commit=True),
            ):
                outcomes = self._apply_in(connection, pending, now)
        except BaseException as exc:
            # Rolled back; a connection that failed (or an error of ours) is not kept.
            if not isinstance(exc, DBAPIError) or exc.connection_invalidated:
                self.close()
            raise
        self._kept_until = time.monotonic() + KEEP_CONNECTION_SECONDS
        for item, outcome in zip(pending, outcomes, strict=True):
            if outcome != "applied":
                log.info(
                    "event %s for %s: %s", item.write.event_id, item.write.table.qualified, outcome
                )
        return outcomes

    def refusal(self, pending: Pending, error: DBAPIError) -> str:
        """Why the database refused ``pending`` applied alone, naming the column of the value
        it refused (``refusals``)."""
        return refusals.reason(self.engine, self.table(pending.write.table), pending, error)

    def close(self) -> None:
        """Return the kept connection to the pool (also done when the applier is collected)."""
        self._kept = None
        self._release_kept()

    def _connection(self) -> Connection:
        kept = self._kept
        if kept is not None and not kept.invalidated and time.monotonic() < self._kept_until:
            return kept
        self.close()
        self._kept = kept = self.engine.connect()
        self._release_kept = weakref.finalize(self, kept.close)
        return kept

    # -- the batch --------------------------------------------------------------------------

    def _apply_in(
        self, connection: Connection, pending: Sequence[Pending], now: Any
    ) -> list[Outcome]:
        outcomes: list[Outcome] = ["duplicate"] * len(pending)
        first: dict[str, int] = {}  # event id -> its first place in the batch
        for index, item in enumerate(pending):
            first.setdefault(item.write.event_id, index)
        claimed = self._claim(connection, [pending[i] for i in first.values()], now)
        items = [
            Item(i, pending[i], key_text(pending[i].write.key))
            for i in sorted(first.values())
            if pending[i].write.event_id in claimed
        ]
        parked: list[dict[str, Any]] = []
        for segment in segments(items):
            self._apply_segment(connection, segment, outcomes, parked, now)
        if parked:
            connection.execute(self._statements.park(), parked)
        changed = [
            {"e_id": pending[item.index].write.event_id, "e_outcome": outcomes[item.index]}
            for item in items
            if outcomes[item.index] != _PROVISIONAL
        ]
        if changed:
            connection.execute(self._statements.outcome(), changed)
        return outcomes

    def _claim(self, connection: Connection, pending: list[Pending], now: Any) -> set[str]:
        """Claim the events' ids in the inbox; the ids this transaction claimed (those another
        already holds are duplicates). Inserted in id order, so that two consumers claiming
        overlapping batches take their locks in the same order."""
        rows = sorted(
            (
                {
                    "event_id": p.write.event_id,
                    "detail_type": p.detail_type,
                    "table_name": p.write.table.qualified,
                    "outcome": _PROVISIONAL,
                    "applied_at": now,
                }
                for p in pending
            ),
            key=lambda r: r["event_id"],
        )
        return {row[0] for row in connection.execute(self._statements.claim(), rows)}

    def _apply_segment(
        self,
        connection: Connection,
        segment: Segment,
        outcomes: list[Outcome],
        parked: list[dict[str, Any]],
        now: Any,
    ) -> None:
        table = self.table(segment.table)
        rows = self._lock_rows(connection, table, segment)
        synced = self._synced(connection, segment, rows)
        applied: list[Item] = []
        for item in segment.items:
            decision, legacy_version = _decide(item, rows.get(item.index), synced)
            outcomes[item.index] = _OUTCOMES[decision]
            if decision == "apply":
                applied.append(item)
            elif decision == "park":
                parked.append(_parked(item, segment.table, legacy_version, now))
        self._write(connection, table, applied)
        self._remember(connection, segment.table, applied)

    def _synced(
        self, connection: Connection, segment: Segment, rows: dict[int, dict[str, Any]]
    ) -> dict[str, str | None]:
        """The versions sync back last wrote, for the rows that exist and whose policy asks
        whether the legacy application changed them since; read after the rows were locked."""
        asked = [
            item.key_text
            for item in segment.items
            if item.index in rows and reads_synced_version(item.pending.write.policy)
        ]
        if not asked:
            return {}
        return {
            key: version
            for key, version in connection.execute(
                self._statements.synced(), {"s_table": segment.table.qualified, "s_keys": asked}
            )
        }

    def _write(self, connection: Connection, table: Table, applied: list[Item]) -> None:
        """The writes, in the events' order. A run of upserts of one shape is one call with a
        parameter set per row, sent as one multi-row INSERT (the keys of a segment differ, so
        no row is written twice by it); a run of deletes is one executemany."""
        for shape, run in runs(applied, table):
            connection.execute(
                self._statements.write(table, shape),
                [parameters(shape, item.pending.write) for item in run],
            )

    def _remember(self, connection: Connection, ref: TableRef, applied: list[Item]) -> None:
        """Record the versions written (and forget the rows deleted) in synced rows."""
        remembered = [
            {
                "s_table": ref.qualified,
                "s_key": item.key_text,
                "s_version": synced_version(item.pending.write),
                "s_event": item.pending.write.event_id,
            }
            for item in applied
            if item.pending.write.op != "delete"
        ]
        if remembered:
            connection.execute(self._statements.remember(), remembered)
        forgotten = [
            {"s_table": ref.qualified, "s_key": item.key_text}
            for item in applied
            if item.pending.write.op == "delete"
        ]
        if forgotten:
            connection.execute(self._statements.forget(), forgotten)

    def _lock_rows(
        self, connection: Connection, table: Table, segment: Segment
    ) -> dict[int, dict[str, Any]]:
        """The segment's legacy rows that exist (their key and version columns), by the place
        of their event in the batch, locked (``FOR UPDATE``, in key order) until the
        transaction ends: one query for all."""
        key_columns = segment.key_columns
        versions = tuple(
            sorted(
                {
                    item.pending.version_column
                    for item in segment.items
                    if item.pending.version_column
                }
                - set(key_columns)
            )
        )
        names = (*key_columns, *versions)
        keys = [tuple(item.pending.write.key[c] for c in key_columns) for item in segment.items]
        statement = self._statements.lock(table, segment.table, key_columns, versions)
        returned = connection.execute(
            statement, {"l_keys": [k[0] for k in keys] if len(key_columns) == 1 else keys}
        ).all()
        rows: dict[int, dict[str, Any]] = {}
        try:
            found = {
                tuple(row[: len(key_columns)]): dict(zip(names, row, strict=True))
                for row in returned
            }
            rows = {
                item.index: found[key]
                for item, key in zip(segment.items, keys, strict=True)
                if key in found
            }
        except TypeError:  # a key value Python cannot hash
            found = {}
        if len(rows) == len(found) == len(returned):
            return rows
        # A row that matches no event's key as Python compares them (a key type the driver
        # returns in another form, a collation that folds case): ask for each key alone, as
        # SQL compares it (the rows are locked already).
        single = self._statements.lock_one(table, segment.table, key_columns, versions)
        rows = {}
        for item, key in zip(segment.items, keys, strict=True):
            row = connection.execute(single, {f"l_{j}": v for j, v in enumerate(key)}).first()
            if row is not None:
                rows[item.index] = dict(zip(names, row, strict=True))
        return rows


def _decide(
    item: Item, current: dict[str, Any] | None, synced: dict[str, str | None]
) -> tuple[Decision, Any]:
    """The policy's decision for one event, from its legacy row as the events before it in the
    segment left it (``None``: no row); and the row's version, for a parked event's reason."""
    write, version_column = item.pending.write, item.pending.version_column
    legacy_version = current[version_column] if current is not None and version_column else None
    if isinstance(legacy_version, str) and isinstance(write.version, datetime):
        legacy_version = parse_iso(legacy_version)  # SQLite keeps timestamps as text
    decision = decide(
        write.policy,
        current is not None,
        legacy_version,
        write.version,
        synced.get(item.key_text),
    )
    return decision, legacy_version


def _parked(item: Item, ref: TableRef, legacy_version: Any, now: Any) -> dict[str, Any]:
    """A parked event's row in the conflicts table."""
    write = item.pending.write
    return {
        "event_id": write.event_id,
        "table_name": ref.qualified,
        "row_key": item.key_text,
        "reason": (
            f"legacy version {version_text(legacy_version)}, event version "
            f"{version_text(write.version)}, policy {write.policy}"
        ),
        "body": item.pending.body,
        "created_at": now,
    }

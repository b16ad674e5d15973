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
import unicodedata
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Executable,
    MetaData,
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
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, NoSuchTableError

from cdc.bus.events import parse_iso
from cdc.core.errors import ConfigError
from cdc.core.origin import origin_tag
from cdc.core.state import StateTables
from cdc.core.tables import TableRef
from sync_back.policy import Decision, decide, reads_synced_version, version_text

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


@dataclass(frozen=True, slots=True)
class Pending:
    """A write to apply, with what the inbox and the policy need besides."""

    write: Any  # sync_back.rows.RowWrite
    detail_type: str
    version_column: str | None
    body: str


@dataclass(slots=True)
class _Item:
    """A claimed event being applied: its place in the batch and its key in synced rows."""

    index: int
    pending: Pending
    key_text: str


@dataclass(slots=True)
class _Segment:
    """Consecutive claimed events on one table, with different keys."""

    table: TableRef
    key_columns: tuple[str, ...]
    items: list[_Item] = field(default_factory=list)
    seen: set[tuple[Any, ...]] = field(default_factory=set)


class Applier:
    def __init__(self, engine: Engine, state: StateTables, logical: bool = False) -> None:
        self.engine = engine
        self.state = state
        self.logical = logical
        self._tables: dict[TableRef, Table] = {}
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        # Statements built once per shape and reused: SQLAlchemy then finds them compiled in its
        # cache without walking a new statement (most of a statement's cost in Python).
        self._statements: dict[tuple[Any, ...], Any] = {}
        self._kept: Connection | None = None
        self._kept_until = 0.0
        self._release_kept: Callable[[], Any] = lambda: None

    def table(self, ref: TableRef) -> Table:
        found = self._tables.get(ref)
        if found is None:
            schema = (
                None
                if self.engine.dialect.name == "sqlite" and ref.schema == "main"
                else ref.schema
            )
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
        now: Any = datetime.now(UTC)
        if self.engine.dialect.name == "sqlite":
            now = now.isoformat()
        connection = self._connection()
        try:
            with (
                connection.begin(),
                origin_tag(connection, ORIGIN, logical=self.logical, to_commit=True),
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
            _Item(i, pending[i], _key_text(pending[i].write.key))
            for i in sorted(first.values())
            if pending[i].write.event_id in claimed
        ]
        parked: list[dict[str, Any]] = []
        for segment in _segments(items):
            self._apply_segment(connection, segment, outcomes, parked, now)
        if parked:
            conflicts = self.state.conflicts
            connection.execute(
                self._insert(conflicts).on_conflict_do_nothing(
                    index_elements=[conflicts.c.event_id]
                ),
                parked,
            )
        changed = [
            {"e_id": pending[item.index].write.event_id, "e_outcome": outcomes[item.index]}
            for item in items
            if outcomes[item.index] != _PROVISIONAL
        ]
        if changed:
            connection.execute(self._statement(("outcome",), self._outcome_statement), changed)
        return outcomes

    def _claim(self, connection: Connection, pending: list[Pending], now: Any) -> set[str]:
        """Claim the events' ids in the inbox; the ids this transaction claimed (those another
        already holds are duplicates). Inserted in id order, so that two consumers claiming
        overlapping batches take their locks in the same order."""
        inbox = self.state.inbox
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
        statement = self._statement(
            ("claim",),
            lambda: (
                self._insert(inbox)
                .on_conflict_do_nothing(index_elements=[inbox.c.event_id])
                .returning(inbox.c.event_id)
            ),
        )
        return {row[0] for row in connection.execute(statement, rows)}

    def _apply_segment(
        self,
        connection: Connection,
        segment: _Segment,
        outcomes: list[Outcome],
        parked: list[dict[str, Any]],
        now: Any,
    ) -> None:
        ref = segment.table
        table = self.table(ref)
        rows = self._lock_rows(connection, table, segment)
        # The versions sync back last wrote, for the rows that exist and whose policy asks
        # whether the legacy application changed them since; read after the rows were locked.
        asked = [
            item.key_text
            for item in segment.items
            if item.index in rows and reads_synced_version(item.pending.write.policy)
        ]
        synced: dict[str, str | None] = {}
        if asked:
            synced = {
                key: version
                for key, version in connection.execute(
                    self._statement(("synced",), self._synced_statement),
                    {"s_table": ref.qualified, "s_keys": asked},
                )
            }
        applied: list[_Item] = []
        for item in segment.items:
            write, version_column = item.pending.write, item.pending.version_column
            current = rows.get(item.index)
            legacy_version = (
                current[version_column] if current is not None and version_column else None
            )
            if isinstance(legacy_version, str) and isinstance(write.version, datetime):
                legacy_version = parse_iso(legacy_version)  # SQLite keeps timestamps as text
            decision = decide(
                write.policy,
                current is not None,
                legacy_version,
                write.version,
                synced.get(item.key_text),
            )
            outcomes[item.index] = _OUTCOMES[decision]
            if decision == "apply":
                applied.append(item)
            elif decision == "park":
                parked.append(
                    {
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
                )
        # The writes, in the events' order. A run of upserts of one shape is one call with a
        # parameter set per row; RETURNING has SQLAlchemy send it as one multi-row INSERT
        # ("insertmanyvalues", from the statement compiled once; the keys of a segment differ,
        # so no row is written twice by it). A run of deletes is one executemany.
        for shape, run in _runs(applied, table):
            if shape[2] == "delete":
                connection.execute(
                    self._statement(shape, self._delete_statement, table, shape),
                    [_delete_parameters(shape, item.pending.write) for item in run],
                )
            else:
                connection.execute(
                    self._statement(shape, self._upsert_statement, table, shape),
                    [_upsert_parameters(shape, item.pending.write) for item in run],
                )
        remembered = [
            {
                "s_table": ref.qualified,
                "s_key": item.key_text,
                "s_version": _synced_version(item.pending.write),
                "s_event": item.pending.write.event_id,
            }
            for item in applied
            if item.pending.write.op != "delete"
        ]
        if remembered:
            connection.execute(self._statement(("remember",), self._remember_statement), remembered)
        forgotten = [
            {"s_table": ref.qualified, "s_key": item.key_text}
            for item in applied
            if item.pending.write.op == "delete"
        ]
        if forgotten:
            connection.execute(self._statement(("forget",), self._forget_statement), forgotten)

    def _lock_rows(
        self, connection: Connection, table: Table, segment: _Segment
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
        statement = self._statement(
            ("lock", segment.table, key_columns, versions),
            self._lock_statement,
            table,
            key_columns,
            versions,
        )
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
        single = self._statement(
            ("lock one", segment.table, key_columns, versions),
            self._lock_one_statement,
            table,
            key_columns,
            versions,
        )
        rows = {}
        for item, key in zip(segment.items, keys, strict=True):
            row = connection.execute(single, {f"l_{j}": v for j, v in enumerate(key)}).first()
            if row is not None:
                rows[item.index] = dict(zip(names, row, strict=True))
        return rows

    # -- statements, built once per shape ---------------------------------------------------

    def _statement(
        self, shape: tuple[Any, ...], build: Callable[..., Executable], *args: Any
    ) -> Executable:
        found = self._statements.get(shape)
        if found is None:
            found = self._statements[shape] = build(*args)
        return found

    def _lock_statement(
        self, table: Table, key_columns: tuple[str, ...], versions: tuple[str, ...]
    ) -> Executable:
        keys = [table.c[c] for c in key_columns]
        where = (
            keys[0].in_(bindparam("l_keys", expanding=True))
            if len(keys) == 1
            else tuple_(*keys).in_(bindparam("l_keys", expanding=True))
        )
        columns = [*keys, *(table.c[c] for c in versions)]
        return select(*columns).where(where).order_by(*keys).with_for_update()

    def _lock_one_statement(
        self, table: Table, key_columns: tuple[str, ...], versions: tuple[str, ...]
    ) -> Executable:
        keys = [table.c[c] for c in key_columns]
        columns = [*keys, *(table.c[c] for c in versions)]
        return (
            select(*columns)
            .where(and_(*(column == bindparam(f"l_{j}") for j, column in enumerate(keys))))
            .with_for_update()
        )

    def _synced_statement(self) -> Executable:
        synced = self.state.synced_rows
        return select(synced.c.row_key, synced.c.version).where(
            synced.c.table_name == bindparam("s_table"),
            synced.c.row_key.in_(bindparam("s_keys", expanding=True)),
        )

    def _remember_statement(self) -> Executable:
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

    def _forget_statement(self) -> Executable:
        synced = self.state.synced_rows
        return delete(synced).where(
            synced.c.table_name == bindparam("s_table"), synced.c.row_key == bindparam("s_key")
        )

    def _outcome_statement(self) -> Executable:
        inbox = self.state.inbox
        return (
            update(inbox)
            .where(inbox.c.event_id == bindparam("e_id"))
            .values(outcome=bindparam("e_outcome"))
        )

    def _delete_statement(self, table: Table, shape: tuple[Any, ...]) -> Executable:
        key_columns = shape[3]
        return delete(table).where(
            and_(*(table.c[c] == bindparam(f"k_{j}") for j, c in enumerate(key_columns)))
        )

    def _upsert_statement(self, table: Table, shape: tuple[Any, ...]) -> Executable:
        key_columns, columns = shape[3], shape[4]
        values: dict[str, ColumnElement[Any]] = {}
        for j, (column, as_json_text) in enumerate(columns):
            # json columns arrive as JSON text (every digit kept): cast by the database, not
            # serialised again by SQLAlchemy's JSON type, which would store a JSON string.
            values[column] = (
                cast(bindparam(f"v_{j}", type_=Text()), table.c[column].type)
                if as_json_text
                else bindparam(f"v_{j}", type_=table.c[column].type)
            )
        statement = self._insert(table).values(values)
        others = {c: statement.excluded[c] for c, _ in columns if c not in key_columns}
        index_elements = [table.c[c] for c in key_columns]
        upsert = (
            statement.on_conflict_do_update(index_elements=index_elements, set_=others)
            if others
            else statement.on_conflict_do_nothing(index_elements=index_elements)
        )
        return upsert.returning(index_elements[0])


# -- helpers ----------------------------------------------------------------------------------


def _key_text(key: dict[str, Any]) -> str:
    """A row's key as the synced-rows and conflicts tables hold it."""
    return orjson.dumps(key, default=str, option=orjson.OPT_SORT_KEYS).decode()


def _loose(value: Any) -> Any:
    """A key value folded as a database collation might fold it (case, accents, trailing
    spaces), so that keys the database could take for one row never share a segment."""
    if isinstance(value, str):
        decomposed = unicodedata.normalize("NFKD", value).casefold()
        return "".join(c for c in decomposed if not unicodedata.combining(c)).rstrip(" ")
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    try:
        hash(value)
    except TypeError:
        return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS).decode()
    return value


def _segments(items: list[_Item]) -> Iterator[_Segment]:
    segment: _Segment | None = None
    for item in items:
        write = item.pending.write
        key_columns = tuple(sorted(write.key))
        loose = tuple(_loose(write.key[c]) for c in key_columns)
        if (
            segment is None
            or segment.table != write.table
            or segment.key_columns != key_columns
            or loose in segment.seen
        ):
            if segment is not None:
                yield segment
            segment = _Segment(write.table, key_columns)
        segment.items.append(item)
        segment.seen.add(loose)
    if segment is not None:
        yield segment


def _runs(applied: list[_Item], table: Table) -> Iterator[tuple[tuple[Any, ...], list[_Item]]]:
    """Consecutive writes of one shape (operation and columns), in order."""
    shape: tuple[Any, ...] | None = None
    run: list[_Item] = []
    for item in applied:
        write = item.pending.write
        key_columns = tuple(write.key)
        if write.op == "delete":
            this: tuple[Any, ...] = ("write", write.table, "delete", key_columns, ())
        else:
            columns = tuple(
                (column, isinstance(value, str) and isinstance(table.c[column].type, sqltypes.JSON))
                for column, value in write.values.items()
            )
            this = ("write", write.table, "upsert", key_columns, columns)
        if this != shape and run:
            assert shape is not None
            yield shape, run
            run = []
        shape = this
        run.append(item)
    if run:
        assert shape is not None
        yield shape, run


def _delete_parameters(shape: tuple[Any, ...], write: Any) -> dict[str, Any]:
    return {f"k_{j}": write.key[c] for j, c in enumerate(shape[3])}


def _upsert_parameters(shape: tuple[Any, ...], write: Any) -> dict[str, Any]:
    return {f"v_{j}": write.values[column] for j, (column, _) in enumerate(shape[4])}


def _synced_version(write: Any) -> str | None:
    return None if write.version is None else version_text(write.version)

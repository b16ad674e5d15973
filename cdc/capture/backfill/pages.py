"""The chunk reader: keyset pages of a table, and what the read of a page could not see.

A page is one short statement in primary-key order (``WHERE (k1, k2) > (...) ORDER BY k1, k2
LIMIT n``: no OFFSET, no lock beyond the statement), each row as the contract's JSON. Beside
it goes a test for the changes the read could not see, from the snapshot taken just before
it; ``chunks`` drops the keys those changes touched, since the stream carries their newer
values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from sqlalchemy import Connection, text

from cdc.bus.events import Change
from cdc.capture.catalog import TableInfo
from cdc.capture.triggers import sqlite_image
from cdc.core.tables import quote_ident

ROW_ALIAS = "cdc_backfill_row"
Mode = Literal["changelog", "logical"]


def key_of(row: dict[str, Any] | Any, key: Sequence[str]) -> bytes:
    """A hashable identity of a row's key, from its contract JSON values."""
    return orjson.dumps([row.get(c) for c in key])


@dataclass(frozen=True)
class Snapshot:
    """A PostgreSQL snapshot (``pg_current_snapshot()``), for 64-bit transaction ids."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, value: str) -> Snapshot:
        xmin, xmax, xip = value.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def sees(self, xid: int) -> bool:
        return xid < self.xmin or (xid < self.xmax and xid not in self.xip)

    def sees_xid32(self, xid: int) -> bool:
        """For the 32-bit xids of the replication protocol: placed in the epoch nearest xmax."""
        full = (self.xmax & ~0xFFFFFFFF) | xid
        if full - self.xmax >= 1 << 31:
            full -= 1 << 32
        return self.sees(full)


def take_snapshot(
    raw: Any, mode: Mode, sqlite: bool, changelog: str
) -> tuple[Callable[[Change], bool], Snapshot | None]:
    """Before a read on the driver connection ``raw``: a test for the changes that read will
    not see, and the snapshot behind it (None on SQLite, where ``changelog``, the change-log
    table's name, stands in for it)."""
    cursor = raw.cursor()
    if sqlite:
        # One writer at a time, and ids taken in commit order: a change is invisible to
        # the read exactly when its id is past the highest id given out before it.
        cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (changelog,))
        found = cursor.fetchone()
        seen = int(found[0]) if found else 0
        return (lambda change: int(change.position) > seen), None
    cursor.execute("SELECT pg_current_snapshot()::text")
    snapshot = Snapshot.parse(cursor.fetchone()[0])
    if mode == "logical":
        return (
            lambda change: change.txid is None or not snapshot.sees_xid32(change.txid),
            snapshot,
        )
    return (lambda change: change.txid is None or not snapshot.sees(change.txid)), snapshot


class TableReader:
    """Keyset pages of one table in primary-key order, each row as the contract's JSON."""

    def __init__(self, connection: Connection, info: TableInfo, where: str | None) -> None:
        self.info = info
        self.key = info.key
        self.sqlite = connection.dialect.name == "sqlite"
        ref = info.ref
        columns = [f"{ROW_ALIAS}.{quote_ident(c)}" for c in self.key]
        if self.sqlite:
            image = sqlite_image(info.columns, ROW_ALIAS)
            source = f"{quote_ident(ref.name)} AS {ROW_ALIAS}"
            placeholders = ", ".join("?" for _ in self.key)
            selected = ", ".join(columns)
            self._limit = "LIMIT ?"
        else:
            types = self._key_types(connection)
            image = f"row_to_json({ROW_ALIAS})::text"
            source = f"{ref.quoted} AS {ROW_ALIAS}"
            # Keys travel as text (the server's own output form) and are cast back: any type
            # that sorts works, and what is stored for resuming is plain JSON.
            placeholders = ", ".join(f"%s::{types[c]}" for c in self.key)
            selected = ", ".join(f"{c}::text" for c in columns)
            self._limit = "LIMIT %s"
        self._source = source
        self._head = f"SELECT {image}, {selected} FROM {source}"
        self._after = f"({', '.join(columns)}) > ({placeholders})"
        self._where = f"({where})" if where else ""
        self._order = f"ORDER BY {', '.join(columns)}"

    def _key_types(self, connection: Connection) -> dict[str, str]:
        ref = self.info.ref
        rows = connection.execute(
            text(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = CAST(:table AS regclass) AND a.attnum > 0 "
                "AND NOT a.attisdropped"
            ),
            {"table": ref.quoted},
        ).all()
        return {name: kind for name, kind in rows}

    def sql(self, after: list[Any] | None) -> str:
        conditions = [c for c in (self._after if after is not None else "", self._where) if c]
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        return f"{self._head}{where} {self._order} {self._limit}"

    def page(
        self, raw: Any, after: list[Any] | None, limit: int
    ) -> tuple[list[dict[str, Any]], list[Any] | None]:
        """Rows after ``after`` (a key as ``last_key`` gave it), and the last key read."""
        cursor = raw.cursor()
        cursor.execute(self.sql(after), (*(after or ()), limit))
        fetched = cursor.fetchall()
        parse, convert = self.info.parse, self.info.convert
        rows = [convert(parse(row[0])) for row in fetched]
        last = list(fetched[-1][1:]) if fetched else after
        return rows, last

    def count(self, connection: Connection) -> int:
        where = f" WHERE {self._where}" if self._where else ""
        return int(
            connection.execute(text(f"SELECT count(*) FROM {self._source}{where}")).scalar() or 0
        )

"""The chunk reader: keyset pages of a table.

A page is one short statement in primary-key order (``WHERE (k1, k2) > (...) ORDER BY k1, k2
LIMIT n``: no OFFSET, no lock beyond the statement), each row as the contract's JSON. Beside
it goes a test for the changes the read could not see, from the snapshot taken just before
it (``CaptureDialect.take_snapshot``); ``chunks`` drops the keys those changes touched, since
the stream carries their newer values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import orjson
from sqlalchemy import Connection, text

from cdc.capture.catalog import TableInfo
from cdc.capture.dialects import capture_of
from cdc.core.dialects import dialect_of
from cdc.core.tables import quote_ident

ROW_ALIAS = "cdc_backfill_row"
Mode = Literal["changelog", "logical"]


def key_of(row: dict[str, Any] | Any, key: Sequence[str]) -> bytes:
    """A hashable identity of a row's key, from its contract JSON values."""
    return orjson.dumps([row.get(c) for c in key])


class TableReader:
    """Keyset pages of one table in primary-key order, each row as the contract's JSON."""

    def __init__(self, connection: Connection, info: TableInfo, where: str | None) -> None:
        self.info = info
        self.key = info.key
        parts = capture_of(dialect_of(connection)).page_sql(
            connection, info.ref, info.columns, self.key, ROW_ALIAS
        )
        columns = [f"{ROW_ALIAS}.{quote_ident(c)}" for c in self.key]
        self._source = parts.source
        self._limit = parts.limit
        self._head = f"SELECT {parts.image}, {parts.keys} FROM {parts.source}"
        self._after = f"({', '.join(columns)}) > ({parts.placeholders})"
        self._where = f"({where})" if where else ""
        self._order = f"ORDER BY {', '.join(columns)}"

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

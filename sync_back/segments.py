"""Segments: the events of a batch that the applier claimed -> runs it can decide together.

A segment is a run of consecutive claimed events on one table whose keys all differ: the next
event for a key already in the segment, or an event for another table, starts a new one. The
applier reads a segment's legacy rows with one locking query and decides each event from the
row as the events before it left it, as when each event was applied on its own.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from cdc.core.tables import TableRef
from sync_back.rows import Pending


@dataclass(slots=True)
class Item:
    """A claimed event being applied: its place in the batch and its key in synced rows."""

    index: int
    pending: Pending
    key_text: str


@dataclass(slots=True)
class Segment:
    """Consecutive claimed events on one table, with different keys."""

    table: TableRef
    key_columns: tuple[str, ...]
    items: list[Item] = field(default_factory=list)
    seen: set[tuple[Any, ...]] = field(default_factory=set)


def key_text(key: dict[str, Any]) -> str:
    """A row's key as the synced-rows and conflicts tables hold it."""
    return orjson.dumps(key, default=str, option=orjson.OPT_SORT_KEYS).decode()


def segments(items: list[Item]) -> Iterator[Segment]:
    segment: Segment | None = None
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
            segment = Segment(write.table, key_columns)
        segment.items.append(item)
        segment.seen.add(loose)
    if segment is not None:
        yield segment


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

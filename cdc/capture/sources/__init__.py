"""Sources read committed changes and acknowledge them once the bus accepted them.

``read`` and ``ack`` are separate calls (as in Debezium): the worker publishes in between, and
a batch that was read but not acknowledged is read again after a crash, with the same event
ids. ``ack`` also stores the batch's dead letters in the same transaction as the
acknowledgement, so an event is never both gone from the source and absent from dead letters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, Protocol

from cdc.bus.events import Change
from cdc.bus.publishers import Rejection
from cdc.capture.catalog import TableInfo

# A backfill's high watermark (cdc.capture.backfill): a logical message with this
# prefix, or a change-log row with this op; either carries the chunk's token.
WATERMARK_PREFIX = "cdc.watermark"
WATERMARK_OP = "watermark"


@dataclass(frozen=True, slots=True)
class Mark:
    """A backfill watermark met in the stream: it sits before ``changes[index]``."""

    index: int
    token: str
    position: str


@dataclass(frozen=True, slots=True)
class Batch:
    changes: Sequence[Change]
    # The source's handle on what to acknowledge (change-log ids, or an LSN).
    ack_ids: Sequence[int] = field(default_factory=tuple)
    last_position: str = ""
    # logical mode: the LSN that may be confirmed to PostgreSQL once this batch is acknowledged
    flush_lsn: int = 0
    marks: Sequence[Mark] = ()
    # change log: fewer rows than asked, so every row visible at the read is in this batch
    drained: bool = False
    # changes the source could not convert (their table gone, a value it cannot read): their
    # raw images go to the dead letters with the reason when the batch is acknowledged
    unrenderable: Sequence[Unrenderable] = ()
    # logical mode: changes of tables outside CDC_TABLES that the stream carried, dropped
    ignored: int = 0


class Unrenderable(NamedTuple):
    change: Change  # the images as stored, unconverted
    reason: str


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits in a source to be published, read from the database when asked (metrics,
    ``cdc status``): rows for a change log, WAL for a replication slot."""

    pending: int | None = None  # change log: rows not yet published (None: not a change log)
    oldest: datetime | None = None  # change log: when the oldest of them was captured
    slot: str | None = None  # the replication slot holding the WAL below (None: no slot)
    retained_bytes: int = 0  # WAL the slot holds back: current LSN - restart LSN
    unconfirmed_bytes: int = 0  # WAL not yet confirmed: current LSN - confirmed flush LSN
    wal_keep_size_bytes: int = -1  # the most WAL the slot may hold (max_slot_wal_keep_size)


class Source(Protocol):
    # True when ``read`` itself waits (up to the poll interval) for changes to arrive, as a
    # stream does; the worker then reads again at once instead of sleeping between batches.
    waits_for_changes: bool

    def read(self, limit: int) -> Batch: ...

    def ack(self, batch: Batch, rejections: Sequence[Rejection]) -> None: ...

    def table(self, name: str) -> TableInfo: ...

    # Reads the database: for metrics and ``cdc status``, never the worker's loop.
    def backlog(self) -> Backlog: ...

    def close(self) -> None: ...

"""A backfill chunk in flight: the rows of one keyset page, waiting for their watermark to
come through the stream, then woven into the batch that carries it as ``read`` events.

Everything here works on values (the batch, the chunk); the ``Backfiller`` does the I/O. Why
a chunk waits for its watermark and drops keys is the package's docstring
(``cdc.capture.backfill``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cdc.bus.events import Change
from cdc.capture.backfill.pages import Mode, key_of
from cdc.capture.backfill.runs import Run
from cdc.capture.catalog import TableInfo
from cdc.capture.sources import Batch


@dataclass
class Pending:
    """A chunk read and waiting for its watermark to come through the stream."""

    run: Run
    info: TableInfo
    rows: list[dict[str, Any]]
    keys: list[bytes]
    last_key: list[Any] | None
    full: bool  # as many rows as asked: more may follow
    invisible: Callable[[Change], bool]
    token: str
    read_at: datetime
    position: str = ""  # the watermark's position, once known (change log: when written)
    # change log: the watermark's xid; every transaction with a lower one may hold lower ids
    writers_below: int = 0
    ready: bool = False
    dropped: set[bytes] = field(default_factory=set)
    truncated: bool = False
    emitted: int = -1  # rows published (-1: not emitted yet)

    def emission_point(self, batch: Batch, mode: Mode) -> int | None:
        """The index in the batch before which the chunk goes in; None: not in this batch."""
        if mode == "logical":
            for mark in batch.marks:
                if mark.token == self.token:
                    self.position = mark.position
                    return mark.index
            return None
        if not self.ready:
            return None
        past = self.position
        for index, change in enumerate(batch.changes):
            if change.position > past:
                return index
        # A drained read returned every row visible to it, the lower ids included.
        return len(batch.changes) if batch.drained else None

    def observe(self, changes: Sequence[Change]) -> None:
        """Drop every key that a change invisible to the read touched: the stream carries its
        newer value. An invisible truncate leaves the whole chunk to the stream."""
        ref = self.info.ref
        key = self.info.key
        invisible = self.invisible
        dropped = self.dropped
        for change in changes:
            if change.table != ref or not invisible(change):
                continue
            if change.op == "truncate":
                self.truncated = True
                continue
            for image in (change.before, change.after):
                if image is not None:
                    dropped.add(key_of(image, key))

    def events(self) -> list[Change]:
        """The chunk's rows left after the drops, as ``read`` events right after the watermark."""
        out: list[Change] = []
        if not self.truncated:
            ref, prefix, moment = self.info.ref, self.position + ".", self.read_at
            # the rows as read now: the table's key and schema version now
            columns, version = self.info.key, self.info.version
            identity = f"backfill:{self.run.id}:"
            dropped = self.dropped
            for row, key in zip(self.rows, self.keys, strict=True):
                if key in dropped:
                    continue
                out.append(
                    Change(
                        ref,
                        "read",
                        None,
                        row,
                        f"{prefix}{len(out):08d}",
                        None,
                        moment,
                        "legacy",
                        (),
                        identity + key.decode(),
                        columns,
                        version,
                    )
                )
        self.emitted = len(out)
        return out

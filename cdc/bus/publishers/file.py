"""The JSON-lines file bus: one EventBridge entry per line, for the embedded default and for
debugging. ``Detail`` is written as an object (not a string) so the file reads well with jq."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from cdc.bus.events import BusEntry, iso_utc
from cdc.bus.publishers import Rejection
from cdc.core.limits import DEFAULT_ENTRY_BYTES


class FilePublisher:
    def __init__(
        self, path: Path, event_bus_name: str, max_entry_bytes: int = DEFAULT_ENTRY_BYTES
    ) -> None:
        self.path = path
        self.event_bus_name = event_bus_name
        self.max_entry_bytes = max_entry_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        _repair_torn_write(path)
        self._file = path.open("a", encoding="utf-8")

    def publish(self, entries: Sequence[BusEntry]) -> list[Rejection]:
        rejections: list[Rejection] = []
        lines: list[str] = []
        for entry in entries:
            if entry.size > self.max_entry_bytes:
                # The same limit as EventBridge, so what passes here passes there.
                rejections.append(
                    Rejection(
                        entry,
                        (
                            f"entry is {entry.size} bytes, over the maximum of "
                            f"{self.max_entry_bytes} (CDC_MAX_ENTRY_BYTES)"
                        ),
                    )
                )
                continue
            lines.append(
                '{"Source":'
                + json.dumps(entry.source)
                + ',"DetailType":'
                + json.dumps(entry.detail_type)
                + ',"Time":"'
                + iso_utc(entry.time)
                + '","EventBusName":'
                + json.dumps(self.event_bus_name)
                + ',"Detail":'
                + entry.detail
                + "}\n"
            )
        if lines:
            self._file.write("".join(lines))
            self._file.flush()
            # Acknowledged means durable: the source deletes the changes after this returns.
            os.fsync(self._file.fileno())
        return rejections

    def close(self) -> None:
        self._file.close()


def _repair_torn_write(path: Path) -> None:
    """A process killed in the middle of a write leaves a partial last line; those entries
    were never acknowledged and will be written again whole, so the fragment is cut off."""
    if not path.exists():
        return
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        # Walk back to the last complete line.
        position = size
        while position > 0:
            step = min(65536, position)
            handle.seek(position - step)
            chunk = handle.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                handle.truncate(position - step + newline + 1)
                return
            position -= step
        handle.truncate(0)


class NullPublisher:
    """Accepts everything and keeps nothing (benchmarks, dry runs)."""

    def __init__(self) -> None:
        self.accepted = 0

    def publish(self, entries: Sequence[BusEntry]) -> list[Rejection]:
        self.accepted += len(entries)
        return []

    def close(self) -> None:
        pass

"""Publishers put bus entries on a bus. The contract every implementation keeps:

``publish(entries)`` returns only when every entry was either accepted by the bus or is
returned as a ``Rejection`` (an entry the bus can never accept: too large, malformed). Transient
failures are retried inside, never dropped. When the worker asks to stop while a publisher is
still retrying, it raises ``cdc.core.errors.Interrupted`` and the caller must not acknowledge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cdc.bus.events import BusEntry


@dataclass(frozen=True, slots=True)
class Rejection:
    entry: BusEntry
    reason: str


class Publisher(Protocol):
    def publish(self, entries: Sequence[BusEntry]) -> list[Rejection]: ...

    def close(self) -> None: ...

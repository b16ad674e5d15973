"""Conflict policies: whether an event may change a legacy row, decided from versions alone.

Two facts decide. *Stale*: the legacy row already holds this version or a newer one (the
event was delivered late, or twice). *Changed by legacy*: the row's version is not the one
sync back last wrote, so the legacy application edited it since. Then:

| policy            | stale                 | changed by legacy, event newer | otherwise |
|-------------------|-----------------------|--------------------------------|-----------|
| `newer_wins`      | skip                  | apply                          | apply     |
| `new_system_wins` | apply                 | apply                          | apply     |
| `legacy_wins`     | skip                  | skip (conflict)                | apply     |
| `park`            | park                  | park                           | apply     |

Under `newer_wins` a stale event never overwrites newer data. Without a version column an
event is never stale and every policy applies it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

ConflictPolicy = Literal["newer_wins", "new_system_wins", "legacy_wins", "park"]
Decision = Literal["apply", "skip_stale", "skip_conflict", "park"]


def decide(
    policy: ConflictPolicy,
    row_exists: bool,
    legacy_version: Any,
    event_version: Any,
    synced_version: str | None,
) -> Decision:
    if not row_exists or event_version is None or legacy_version is None:
        return "apply"
    stale = legacy_version >= event_version
    changed_by_legacy = synced_version is not None and synced_version != version_text(
        legacy_version
    )
    if policy == "new_system_wins":
        return "apply"
    if policy == "park":
        return "park" if stale or changed_by_legacy else "apply"
    if stale:
        return "skip_stale"
    if policy == "legacy_wins" and changed_by_legacy:
        return "skip_conflict"
    return "apply"


def reads_synced_version(policy: ConflictPolicy) -> bool:
    """Whether ``decide`` can depend on the synced version under this policy (only
    `legacy_wins` and `park` ask whether the legacy application changed the row), so the
    caller may leave it unread otherwise."""
    return policy in ("legacy_wins", "park")


def version_text(version: Any) -> str:
    """A version as stored in the synced-rows table, in one form whatever produced it: the
    event's value and the same value read back from the legacy column compare equal."""
    if isinstance(version, datetime):
        moment: datetime = version.astimezone(UTC) if version.tzinfo is not None else version
        return moment.isoformat()
    if isinstance(version, Decimal):
        return format(version.normalize(), "f")
    return str(version)

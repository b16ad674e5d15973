from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sync_back.policy import decide, version_text

T1 = datetime(2026, 1, 1, tzinfo=UTC)
T2 = datetime(2026, 1, 2, tzinfo=UTC)
T3 = datetime(2026, 1, 3, tzinfo=UTC)


@pytest.mark.parametrize(
    ("policy", "legacy", "event", "synced", "expected"),
    [
        # the row is newer than the event: stale
        ("newer_wins", T2, T1, None, "skip_stale"),
        ("newer_wins", T2, T2, None, "skip_stale"),
        ("new_system_wins", T2, T1, None, "apply"),
        ("legacy_wins", T2, T1, None, "skip_stale"),
        ("park", T2, T1, None, "park"),
        # the legacy application changed the row since sync back wrote T1; the event is newer
        ("newer_wins", T2, T3, version_text(T1), "apply"),
        ("new_system_wins", T2, T3, version_text(T1), "apply"),
        ("legacy_wins", T2, T3, version_text(T1), "skip_conflict"),
        ("park", T2, T3, version_text(T1), "park"),
        # nobody else touched it: every policy applies a newer event
        ("newer_wins", T1, T2, version_text(T1), "apply"),
        ("legacy_wins", T1, T2, version_text(T1), "apply"),
        ("park", T1, T2, version_text(T1), "apply"),
        ("new_system_wins", T1, T2, version_text(T1), "apply"),
    ],
)
def test_policies(
    policy: str, legacy: datetime, event: datetime, synced: str | None, expected: str
) -> None:
    assert decide(policy, True, legacy, event, synced) == expected  # type: ignore[arg-type]


def test_a_missing_row_or_no_versions_always_applies() -> None:
    for policy in ("newer_wins", "new_system_wins", "legacy_wins", "park"):
        assert decide(policy, False, None, T1, None) == "apply"  # type: ignore[arg-type]
        assert decide(policy, True, T1, None, None) == "apply"  # type: ignore[arg-type]


def test_version_text_is_one_form_for_equal_values() -> None:
    from datetime import timedelta, timezone
    from decimal import Decimal

    paris = timezone(timedelta(hours=1))
    assert version_text(T1) == version_text(T1.astimezone(paris))
    assert version_text(Decimal("5")) == version_text(Decimal("5.00"))
    assert version_text(7) == "7"


def test_the_synced_version_is_read_only_for_policies_whose_decision_depends_on_it() -> None:
    from sync_back.policy import reads_synced_version

    synced_values = [None, version_text(T1), version_text(T2), version_text(T3)]
    for policy in ("newer_wins", "new_system_wins", "legacy_wins", "park"):
        depends = any(
            len({decide(policy, True, legacy, event, s) for s in synced_values}) > 1  # type: ignore[arg-type]
            for legacy in (T1, T2, T3)
            for event in (T1, T2, T3)
        )
        assert reads_synced_version(policy) == depends, policy  # type: ignore[arg-type]

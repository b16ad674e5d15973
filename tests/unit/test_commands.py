"""What the commands say: their help, and the moments they print."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from cdc.cli import parser
from cdc.core.state import shown_moment


def test_setup_help_names_what_each_capture_mode_installs() -> None:
    listed = " ".join(parser().format_help().split())
    assert (
        "setup install capture on CDC_TABLES: triggers (changelog mode), or the publication "
        "and replication slot (logical mode)" in listed
    )


def test_migrate_drop_asks_for_yes_and_force_is_separate() -> None:
    args = parser().parse_args(["migrate", "--drop"])
    assert args.drop and not args.yes and not args.force
    args = parser().parse_args(["migrate", "--drop", "--yes", "--force"])
    assert args.yes and args.force


@pytest.mark.parametrize(
    "stored",
    [
        "2026-11-28T17:45:52.123Z",  # SQLite's checkpoints (strftime ... 'Z')
        "2026-11-28T17:45:52.123456+00:00",  # SQLite's dead letters (isoformat)
        datetime(2026, 11, 28, 17, 45, 52, 123456, tzinfo=UTC),  # PostgreSQL's timestamptz
        datetime(2026, 11, 28, 18, 45, 52, tzinfo=timezone(timedelta(hours=1))),  # a session's
    ],
)
def test_moments_print_alike_from_either_database(stored: datetime | str) -> None:
    assert shown_moment(stored) == "2026-11-28T17:45:52Z"


def test_absent_or_odd_moments_print_as_they_are() -> None:
    assert shown_moment(None) == "-"
    assert shown_moment("yesterday") == "yesterday"

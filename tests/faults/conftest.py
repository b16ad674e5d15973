"""Fault tests report what they did (kills, faults injected, changes, lost, duplicates) in
the summary at the end of the run, where CI shows it."""

from __future__ import annotations

from typing import Any

import pytest

SUMMARY: list[str] = []


@pytest.fixture
def fault_summary() -> list[str]:
    return SUMMARY


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARY:
        terminalreporter.section("fault summary")
        for line in SUMMARY:
            terminalreporter.write_line(line)

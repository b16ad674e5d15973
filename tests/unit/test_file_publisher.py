from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from cdc.bus.events import BusEntry
from cdc.bus.publishers.file import FilePublisher


def entry(n: int, detail: str | None = None) -> BusEntry:
    return BusEntry.create(
        f"id-{n}",
        "public.t",
        "legacy.db",
        "public.t.insert",
        datetime(2026, 1, 1, tzinfo=UTC),
        detail or json.dumps({"n": n}),
    )


def test_one_entry_per_line_with_the_eventbridge_fields(tmp_path: Path) -> None:
    path = tmp_path / "bus" / "events.jsonl"
    publisher = FilePublisher(path, "legacy-bus", max_entry_bytes=1024)
    rejected = publisher.publish([entry(1), entry(2, json.dumps({"big": "x" * 2000})), entry(3)])
    publisher.close()
    assert [r.entry.event_id for r in rejected] == ["id-2"]
    assert "over the maximum of 1024" in rejected[0].reason
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {
            "Source": "legacy.db",
            "DetailType": "public.t.insert",
            "Time": "2026-01-01T00:00:00.000000Z",
            "EventBusName": "legacy-bus",
            "Detail": {"n": n},
        }
        for n in (1, 3)
    ]


def test_a_torn_last_line_from_a_killed_process_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"complete": 1}\n{"torn": ')
    FilePublisher(path, "bus").publish([entry(5)])
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"complete": 1}
    assert json.loads(lines[1])["Detail"] == {"n": 5}
    assert len(lines) == 2

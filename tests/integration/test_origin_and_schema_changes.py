"""The writer's origin is recorded and sync-back writes are not echoed; schema changes flow."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

from cdc.bus.publishers.file import NullPublisher
from cdc.capture.worker import Worker
from cdc.core.dialects import dialect_of
from cdc.core.settings import load_settings
from tests.integration.helpers import changelog_source, prepared, settings_for


class Recorder(NullPublisher):
    def __init__(self) -> None:
        super().__init__()
        self.details: list[str] = []

    def publish(self, entries):  # type: ignore[no-untyped-def]
        self.details.extend(e.detail for e in entries)
        return super().publish(entries)


def drain(settings, engine) -> list[dict]:  # type: ignore[no-untyped-def]
    import json

    recorder = Recorder()
    worker = Worker(settings, changelog_source(settings, engine), recorder)
    while worker.step():
        pass
    return [json.loads(d) for d in recorder.details]


def sqlite_settings(tmp_path: Path, **extra: str):  # type: ignore[no-untyped-def]
    env = {"CDC_DATABASE_URL": f"sqlite:///{tmp_path / 'legacy.db'}", "CDC_TABLES": "notes"}
    env.update({f"CDC_{k.upper()}": v for k, v in extra.items()})
    return load_settings(env)


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_sync_back_writes_are_skipped_unless_asked(
    dialect: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if dialect == "postgresql":
        url: URL = request.getfixturevalue("pg_url")
        settings = settings_for(url, "notes")
    else:
        url = make_url(f"sqlite:///{tmp_path / 'legacy.db'}")
        settings = sqlite_settings(tmp_path)
    engine = prepared(settings, "CREATE TABLE notes (id int PRIMARY KEY, body text)")
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO notes VALUES (1, 'legacy edit')"))
    with engine.begin() as connection, dialect_of(connection).origin_tag(connection, "sync_back"):
        connection.execute(text("INSERT INTO notes VALUES (2, 'from the new system')"))
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO notes VALUES (3, 'legacy again')"))
    published = drain(settings, engine)
    assert [d["key"]["id"] for d in published] == [1, 3]
    assert {d["origin"] for d in published} == {"legacy"}

    # With no origins skipped, the tagged change is published and marked as such
    with engine.begin() as connection, dialect_of(connection).origin_tag(connection, "sync_back"):
        connection.execute(text("UPDATE notes SET body = 'b' WHERE id = 2"))
    noisy = settings.model_copy(update={"skip_origins": []})
    [echo] = drain(noisy, engine)
    assert echo["origin"] == "sync_back" and echo["key"] == {"id": 2}


@pytest.mark.integration
def test_columns_added_and_dropped_while_running_show_in_the_next_events(pg_url: URL) -> None:
    settings = settings_for(pg_url, "notes")
    engine = prepared(settings, "CREATE TABLE notes (id int PRIMARY KEY, body text)")
    source = changelog_source(settings, engine)
    recorder = Recorder()
    worker = Worker(settings, source, recorder)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO notes VALUES (1, 'a')"))
    worker.step()
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE notes ADD COLUMN amount numeric(8,3)"))
        connection.execute(text("UPDATE notes SET amount = 2.5 WHERE id = 1"))
        connection.execute(text("ALTER TABLE notes DROP COLUMN body"))
        connection.execute(text("INSERT INTO notes VALUES (2, 1)"))
    worker.step()
    import json

    details = [json.loads(d) for d in recorder.details]
    assert [d["schema_version"] for d in details if d["op"] == "schema"] == [2, 3]
    details = [d for d in details if d["op"] != "schema"]
    assert details[0]["after"] == {"id": 1, "body": "a"}
    assert details[1]["after"] == {"id": 1, "body": "a", "amount": "2.500"}  # exact, by new type
    assert details[2]["after"] == {"id": 2, "amount": "1.000"}

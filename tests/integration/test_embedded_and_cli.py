"""The embedded default through the real command line, the commands the container runs, and
the shape of what the wheel ships."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ProgrammingError

ROOT = Path(__file__).resolve().parents[2]


ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(extra)
    return env


def cdc(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def events_in(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(path: Path, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(events := events_in(path)) < count:
        assert time.monotonic() < deadline, f"only {len(events)} events in {path}"
        time.sleep(0.1)
    return events


def test_embedded_default_shows_inserts_updates_and_deletes(tmp_path: Path) -> None:
    # Given: nothing configured, in an empty folder
    worker = subprocess.Popen(
        [sys.executable, "-m", "cdc", "run"],
        cwd=tmp_path,
        env=clean_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Then: the demo table's first rows arrive as insert events in the file bus
        bus = tmp_path / "cdc-events.jsonl"
        seeded = wait_for(bus, 3)
        assert [e["DetailType"] for e in seeded] == ["main.widgets.insert"] * 3
        # When: rows change while the worker runs
        changed = cdc("demo", cwd=tmp_path)
        assert changed.returncode == 0, changed.stderr
        events = wait_for(bus, 6)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    # Then: each change is an event; SIGTERM ends the worker cleanly
    assert worker.returncode == 0, stderr
    ops = [e["Detail"]["op"] for e in events[3:]]
    assert ops == ["insert", "update", "delete"]
    update = events[4]["Detail"]
    assert update["before"]["price"] == "9.99" and update["after"]["price"] == "10.49"
    assert events[5]["Detail"]["key"] == {"id": 1}
    assert all(e["Source"] == "legacy.cdc-demo" and e["EventBusName"] == "default" for e in events)
    # The demo's moments are written with an offset: published in UTC with 'Z', as timestamptz
    assert re.fullmatch(ISO_UTC, update["after"]["updated_at"]), update["after"]
    status = cdc("status", cwd=tmp_path)
    assert "pending changes: 0" in status.stdout and "dead letters:    0" in status.stdout
    # Times print as on PostgreSQL (test_status_and_removal_of_the_state_schema)
    assert re.search(r"last at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)", status.stdout), status.stdout


def test_configuration_errors_exit_2_naming_the_setting_without_the_password(
    tmp_path: Path,
) -> None:
    result = cdc(
        "run",
        cwd=tmp_path,
        env=clean_env(CDC_DATABASE_URL="postgresql://capture:hunter2@127.0.0.1:1/legacy"),
    )
    assert result.returncode == 2
    assert "CDC_TABLES" in result.stderr and "hunter2" not in result.stderr + result.stdout


def test_unreachable_database_message_hides_the_password(tmp_path: Path) -> None:
    result = cdc(
        "migrate",
        cwd=tmp_path,
        env=clean_env(
            CDC_DATABASE_URL="postgresql://capture:hunter2@127.0.0.1:1/legacy", CDC_TABLES="t"
        ),
    )
    assert result.returncode != 0
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.integration
@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_tls_options_pass_through_to_the_server(pg_url: URL, tmp_path: Path, capture: str) -> None:
    # The local server has no TLS: requiring it must fail, and say so, with no password shown.
    url = pg_url.set(password="hunter2").update_query_dict({"sslmode": "require"})
    env = clean_env(
        CDC_DATABASE_URL=url.render_as_string(hide_password=False),
        CDC_TABLES="t",
        CDC_CAPTURE=capture,
    )
    refused = cdc("status", cwd=tmp_path, env=env)
    assert refused.returncode != 0
    assert "SSL" in refused.stderr and "hunter2" not in refused.stderr + refused.stdout
    if capture == "logical":  # the replication connection takes the same options
        from cdc.core.database import conninfo_of
        from cdc.core.settings import load_settings

        settings = load_settings({k: v for k, v in env.items() if k.startswith("CDC_")})
        assert "sslmode=require" in conninfo_of(settings.url)
    allowed = url.update_query_dict({"sslmode": "disable"})
    accepted = cdc(
        "migrate",
        cwd=tmp_path,
        env={**env, "CDC_DATABASE_URL": allowed.render_as_string(hide_password=False)},
    )
    assert accepted.returncode == 0, accepted.stderr


@pytest.mark.integration
def test_container_commands_migrate_then_setup_then_status(pg_url: URL, tmp_path: Path) -> None:
    # The Dockerfile runs `cdc migrate` as a one-off and `cdc run` as its command.
    legacy = create_engine(pg_url)
    with legacy.begin() as connection:
        connection.execute(text("CREATE TABLE orders (id int PRIMARY KEY, total numeric)"))
        connection.execute(text("CREATE TABLE logbook (line text)"))
    env = clean_env(
        CDC_DATABASE_URL=pg_url.render_as_string(hide_password=False), CDC_TABLES="orders"
    )
    before = set(inspect(legacy).get_table_names(schema="public"))
    assert "run `cdc migrate` first" in cdc("setup", cwd=tmp_path, env=env).stderr
    migrated = cdc("migrate", cwd=tmp_path, env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert cdc("migrate", cwd=tmp_path, env=env).returncode == 0  # idempotent
    # Alembic touched nothing of the legacy schema
    assert set(inspect(legacy).get_table_names(schema="public")) == before
    assert {"changelog", "checkpoints", "dead_letters", "alembic_version"} <= set(
        inspect(legacy).get_table_names(schema="cdc")
    )
    for _ in range(2):  # idempotent
        setup = cdc("setup", cwd=tmp_path, env=env)
        assert setup.returncode == 0, setup.stderr
    refused = cdc("setup", cwd=tmp_path, env={**env, "CDC_TABLES": "orders,logbook"})
    assert refused.returncode == 1 and "public.logbook has no primary key" in refused.stderr
    missing = cdc("setup", cwd=tmp_path, env={**env, "CDC_TABLES": "ordres"})
    assert "public.ordres does not exist" in missing.stderr

    def trigger_count() -> int:
        with legacy.connect() as connection:
            return int(
                connection.execute(
                    text(
                        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.orders'::regclass "
                        "AND NOT tgisinternal"
                    )
                ).scalar_one()
            )

    assert trigger_count() == 2
    with legacy.begin() as connection:
        connection.execute(text("INSERT INTO orders VALUES (1, 9.90)"))
    assert "pending changes: 1" in cdc("status", cwd=tmp_path, env=env).stdout
    dropped = cdc("setup", "--drop", cwd=tmp_path, env=env)
    assert (
        dropped.returncode == 0
        and dropped.stdout == "capture triggers removed from public.orders\n"
    )
    assert trigger_count() == 0
    again = cdc("setup", "--drop", cwd=tmp_path, env=env)
    assert (
        again.returncode == 0 and again.stdout == "public.orders: no capture triggers to remove\n"
    )
    with legacy.begin() as connection:
        connection.execute(text("INSERT INTO orders VALUES (2, 1)"))
    assert "pending changes: 1" in cdc("status", cwd=tmp_path, env=env).stdout
    legacy.dispose()


def test_wheel_ships_the_migrations_and_migrate_works_from_it(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cdc/migrations/env.py" in names
    assert any(n.startswith("cdc/migrations/versions/0001") for n in names)
    assert any(n.startswith("cdc/migrations/versions/0002") for n in names)
    assert not any(n.startswith(("tests/", "bench/", "migrations/")) for n in names)
    # Installed alone (dependencies from this environment), from a folder away from the repo
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    env = clean_env(
        PYTHONPATH=str(target), CDC_DATABASE_URL=f"sqlite:///{tmp_path / 'l.db'}", CDC_TABLES="t"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import cdc, sys; print(cdc.__file__); "
            "from cdc.cli import main; sys.exit(main(['migrate']))",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    head = sorted(n for n in names if re.match(r"cdc/migrations/versions/\d{4}_", n))[-1]
    assert str(target) in result.stdout
    assert f"revision {head.split('/')[-1][:4]}" in result.stdout


def test_a_missing_event_bus_or_region_stops_start_up(tmp_path: Path, moto_endpoint: str) -> None:
    env = clean_env(CDC_BUS="eventbridge", CDC_EVENT_BUS_NAME="no-such-bus")
    result = cdc("run", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "CDC_EVENT_BUS_NAME: there is no event bus named 'no-such-bus'" in result.stderr
    env = {k: v for k, v in env.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
    result = cdc("run", cwd=tmp_path, env={**env, "AWS_CONFIG_FILE": "/nonexistent"})
    assert result.returncode == 2 and "AWS_DEFAULT_REGION" in result.stderr


@pytest.mark.integration
def test_sync_back_commands(pg_url: URL, tmp_path: Path) -> None:
    # Sync back and migrations need no CDC_TABLES (a sync-back-only deployment has none);
    # capture still asks for it.
    env = clean_env(CDC_DATABASE_URL=pg_url.render_as_string(hide_password=False))
    assert cdc("migrate", cwd=tmp_path, env=env).returncode == 0
    refused = cdc("run", cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "CDC_TABLES" in refused.stderr

    def sync_back(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sync_back.cli", *args],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )

    missing = sync_back("run")
    assert missing.returncode == 2 and "CDC_SYNC_QUEUE_URL" in missing.stderr
    unmapped = sync_back("run", CDC_SYNC_QUEUE_URL="http://127.0.0.1:1/q")
    assert unmapped.returncode == 2 and "no [[sync_back.mappings]]" in unmapped.stderr
    listed = sync_back("dead-letters")
    assert listed.returncode == 0 and "no dead letters" in listed.stdout
    assert "no parked conflicts" in sync_back("conflicts").stdout


@pytest.mark.integration
def test_least_privilege_grants_are_enough(pg_url: URL, tmp_path: Path) -> None:
    import uuid

    from cdc.commands.capture import grants_sql
    from cdc.core.settings import load_settings
    from sync_back.grants import sync_back_grants
    from sync_back.mapping import load_mappings

    suffix = uuid.uuid4().hex[:8]
    capture_role, sync_role, app_role = f"cdc_cap_{suffix}", f"cdc_sync_{suffix}", f"app_{suffix}"
    validator_role = f"cdc_val_{suffix}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    env = clean_env(
        CDC_DATABASE_URL=pg_url.render_as_string(hide_password=False), CDC_TABLES="orders"
    )
    with admin.connect() as connection:
        connection.execute(text("CREATE TABLE orders (id int PRIMARY KEY, total numeric)"))
    assert cdc("migrate", cwd=tmp_path, env=env).returncode == 0
    assert cdc("setup", cwd=tmp_path, env=env).returncode == 0
    settings = load_settings({k: v for k, v in env.items() if k.startswith("CDC_")})
    try:
        with admin.connect() as connection:
            sync_lines = sync_back_grants(
                settings, load_mappings(settings.sync_back, settings.default_schema), sync_role
            )
            for line in [
                *grants_sql(settings, capture_role, validator_role).splitlines(),
                *sync_lines,
            ]:
                statement = line.split("  --")[0].strip()
                if statement and not statement.startswith("--"):
                    connection.execute(text(statement))
            # A legacy application role with rights on its own table only
            connection.execute(text(f"CREATE ROLE {app_role} LOGIN"))
            connection.execute(text(f"GRANT INSERT, SELECT ON orders TO {app_role}"))
        legacy = create_engine(pg_url.set(username=app_role))
        with legacy.begin() as connection:  # the trigger needs no grant on the cdc schema
            connection.execute(text("INSERT INTO orders VALUES (1, 9.50)"))
        legacy.dispose()
        bus = tmp_path / "bus.jsonl"
        worker = subprocess.Popen(
            [sys.executable, "-m", "cdc", "run"],
            cwd=tmp_path,
            env={
                **env,
                "CDC_DATABASE_URL": pg_url.set(username=capture_role).render_as_string(
                    hide_password=False
                ),
                "CDC_BUS_FILE": str(bus),
                "CDC_POLL_INTERVAL": "0.05",
            },
        )
        try:
            events = wait_for(bus, 1)
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0
        assert events[0]["Detail"]["after"] == {"id": 1, "total": "9.50"}
        # The validator's role writes its own state and cannot read a legacy table
        validator = create_engine(pg_url.set(username=validator_role))
        with validator.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO cdc.republished (source, event_id, detail_type, status, claim, "
                    "claimed_at) VALUES ('s', 'e', 't', 'claimed', 'c', now())"
                )
            )
            connection.execute(text("UPDATE cdc.republished SET status = 'sent'"))
            connection.execute(
                text(
                    "INSERT INTO cdc.validation_dead_letters (message_id, reason, errors, body, "
                    "created_at, attempts) VALUES ('m', 'r', '[]', '{}', now(), 1)"
                )
            )
        with pytest.raises(ProgrammingError, match="permission denied"), validator.connect() as c:
            c.execute(text("SELECT * FROM orders"))
        validator.dispose()
    finally:
        with admin.connect() as connection:
            for role in (capture_role, sync_role, app_role, validator_role):
                if connection.execute(
                    text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
                ).first():
                    connection.execute(text(f"DROP OWNED BY {role}"))
                    connection.execute(text(f"DROP ROLE {role}"))
        admin.dispose()


@pytest.mark.integration
def test_a_state_schema_behind_or_ahead_of_the_code_is_named(pg_url: URL, tmp_path: Path) -> None:
    from cdc.core import database
    from cdc.core.settings import load_settings

    env = clean_env(
        CDC_DATABASE_URL=pg_url.render_as_string(hide_password=False), CDC_TABLES="orders"
    )
    settings = load_settings({k: v for k, v in env.items() if k.startswith("CDC_")})
    engine = database.connect(settings)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE orders (id int PRIMARY KEY)"))
    database.migrate(engine, settings, "0003")
    behind = cdc("status", cwd=tmp_path, env=env)
    head = database.head_revision(settings)
    assert behind.returncode == 1
    assert f"at revision 0003, this version needs {head}; run `cdc migrate`" in behind.stderr
    assert cdc("migrate", cwd=tmp_path, env=env).returncode == 0
    assert cdc("status", cwd=tmp_path, env=env).returncode == 0
    with engine.begin() as connection:
        connection.execute(text("UPDATE cdc.alembic_version SET version_num = '9999'"))
    ahead = cdc("status", cwd=tmp_path, env=env)
    assert ahead.returncode == 1 and "newer than this version knows" in ahead.stderr
    engine.dispose()


@pytest.mark.integration
@pytest.mark.parametrize("capture", ["changelog", "logical"])
def test_status_and_removal_of_the_state_schema(pg_url: URL, tmp_path: Path, capture: str) -> None:
    legacy = create_engine(pg_url)
    with legacy.begin() as connection:
        connection.execute(text("CREATE TABLE orders (id int PRIMARY KEY, total numeric)"))
    env = clean_env(
        CDC_DATABASE_URL=pg_url.render_as_string(hide_password=False),
        CDC_TABLES="orders",
        CDC_CAPTURE=capture,
        CDC_SLOT_NAME=f"cdc_{pg_url.database}"[:63],
    )
    assert cdc("migrate", cwd=tmp_path, env=env).returncode == 0
    assert cdc("setup", cwd=tmp_path, env=env).returncode == 0
    with legacy.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO cdc.checkpoints (stream, position, published, updated_at) "
                "VALUES (:s, '1', 1, '2026-11-28 18:45:52.5+01')"
            ),
            {"s": capture},
        )
    status = cdc("status", cwd=tmp_path, env=env)
    assert "last at 2026-11-28T17:45:52Z)" in status.stdout, status.stdout
    # Given capture installed: the schema is not removed, and what holds it is named
    refused = cdc("migrate", "--drop", "--yes", cwd=tmp_path, env=env)
    assert refused.returncode == 1 and "capture is installed" in refused.stderr
    named = "capture triggers on public.orders" if capture == "changelog" else "replication slot"
    assert named in refused.stderr and "cdc setup --drop" in refused.stderr
    # When capture is removed, twice: the second time says there was nothing
    first = cdc("setup", "--drop", cwd=tmp_path, env=env).stdout
    second = cdc("setup", "--drop", cwd=tmp_path, env=env).stdout
    assert "removed" in first and "removed" not in second and "to remove" in second
    # Then the removal asks for --yes, and with it leaves the legacy table alone
    unconfirmed = cdc("migrate", "--drop", cwd=tmp_path, env=env)
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    assert "cdc" in inspect(legacy).get_schema_names()
    removed = cdc("migrate", "--drop", "--yes", cwd=tmp_path, env=env)
    assert removed.returncode == 0, removed.stderr
    assert "cdc" not in inspect(legacy).get_schema_names()
    assert inspect(legacy).get_table_names(schema="public") == ["orders"]
    assert "nothing to remove" in cdc("migrate", "--drop", "--yes", cwd=tmp_path, env=env).stdout
    # --force removes capture with the schema
    assert cdc("migrate", cwd=tmp_path, env=env).returncode == 0
    assert cdc("setup", cwd=tmp_path, env=env).returncode == 0
    forced = cdc("migrate", "--drop", "--yes", "--force", cwd=tmp_path, env=env)
    assert forced.returncode == 0, forced.stderr
    assert named.split(" on ")[0] in forced.stdout and "state schema removed" in forced.stdout
    with legacy.connect() as connection:
        assert not connection.execute(
            text("SELECT 1 FROM pg_replication_slots WHERE database = current_database()")
        ).first()
        assert not connection.execute(
            text("SELECT 1 FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND NOT tgisinternal")
        ).first()
    legacy.dispose()

"""An operator's expected failures, through the real commands (subprocesses): each ends in a few
lines naming the setting and the fix, exit status 2 for a wrong setting and 1 for the
environment, the password never shown, no traceback unless asked for.

The wrong password is not here when the server trusts connections from this host (the local
test server does: any password is accepted); ``tests/unit/test_exits.py`` checks it from the
text PostgreSQL sends."""

from __future__ import annotations

import os
import socketserver
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from tests.conftest import free_port
from tests.faults.proxy import FaultPlan, FaultProxy

PASSWORD = "hunter2-not-shown"


@dataclass(frozen=True)
class Failure:
    command: tuple[str, ...]  # the program and its arguments
    status: int
    says: tuple[str, ...]  # words of the message's line: the setting, the fix


FAILURES: dict[str, Failure] = {
    "wrong port": Failure(
        ("cdc", "status"), 1, ("CDC_DATABASE_URL", "nothing accepts connections at 127.0.0.1:")
    ),
    "wrong host (something else answers)": Failure(
        ("cdc", "status"), 2, ("CDC_DATABASE_URL", "is not PostgreSQL")
    ),
    "unknown host name": Failure(
        ("cdc", "migrate"), 2, ("CDC_DATABASE_URL", "'no-such-host.invalid' does not resolve")
    ),
    "missing database": Failure(
        ("sync-back", "dead-letters"), 2, ("CDC_DATABASE_URL", "there is no database")
    ),
    "unknown role": Failure(("cdc", "validate"), 2, ("CDC_DATABASE_URL", "there is no role")),
    "wrong password": Failure(
        ("cdc", "status"), 2, ("CDC_DATABASE_URL", "password authentication failed")
    ),
    "privilege": Failure(("cdc", "migrate"), 1, ("CDC_DATABASE_URL", "lacks a privilege")),
    "TLS required": Failure(("cdc", "schemas", "generate"), 2, ("CDC_DATABASE_URL", "sslmode")),
    "AWS credentials": Failure(
        ("cdc", "run"), 2, ("AWS credentials", "AWS_ACCESS_KEY_ID", "AWS_PROFILE")
    ),
    "AWS endpoint unreachable": Failure(
        ("cdc", "run"), 1, ("AWS_ENDPOINT_URL", "cannot reach AWS at http://127.0.0.1:1/")
    ),
    "AWS credentials (sync back)": Failure(
        ("sync-back", "run"), 2, ("AWS credentials", "AWS_ACCESS_KEY_ID")
    ),
    "throttling at start-up": Failure(
        ("cdc", "topology", "apply"), 1, ("Throttl", "again in a minute")
    ),
}

PROGRAMS = {"cdc": "cdc", "sync-back": "sync_back.cli"}


def run(
    command: tuple[str, ...], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    program, *args = command
    return subprocess.run(
        [sys.executable, "-m", PROGRAMS[program], *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def base_env(**extra: str) -> dict[str, str]:
    """This environment without the service's and AWS's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDC_", "AWS_"))}
    env.update(extra)
    return env


def no_aws_credentials(home: Path) -> dict[str, str]:
    """Nothing for boto3's credential chain to find: no variables, empty files, no IMDS."""
    home.mkdir(exist_ok=True)
    return {
        "HOME": str(home),
        "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }


def with_password(url: URL, password: str = PASSWORD) -> str:
    return url.set(password=password).render_as_string(hide_password=False)


@pytest.fixture
def unprivileged(pg_url: URL) -> Iterator[URL]:
    """A login role with no privilege on the test database beyond connecting."""
    role = f"cdc_noone_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'"))
    try:
        yield pg_url.set(username=role, password=PASSWORD)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP OWNED BY {role}"))
            connection.execute(text(f"DROP ROLE {role}"))
        admin.dispose()


@pytest.fixture
def web_server() -> Iterator[str]:
    """host:port of a server that answers every connection as a web server would, and hangs up."""

    class Answer(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(1024)
            self.request.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Answer) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()


def trusts_this_host(pg_url: URL) -> bool:
    engine = create_engine(pg_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            methods = connection.execute(
                text("SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host'")
            ).scalars()
            return "trust" in set(methods)
    finally:
        engine.dispose()


def environment(case: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment in which ``case`` happens (fixtures are asked for only when needed)."""

    def pg() -> URL:
        url: URL = request.getfixturevalue("pg_url")
        return url

    if case == "wrong port":
        url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/shop"
        return base_env(CDC_DATABASE_URL=url, CDC_TABLES="orders")
    if case == "wrong host (something else answers)":
        web = request.getfixturevalue("web_server")
        url = f"postgresql://postgres:{PASSWORD}@{web}/shop"
        return base_env(CDC_DATABASE_URL=url, CDC_TABLES="orders")
    if case == "unknown host name":
        url = f"postgresql://postgres:{PASSWORD}@no-such-host.invalid:5432/shop"
        return base_env(CDC_DATABASE_URL=url)
    if case == "missing database":
        return base_env(CDC_DATABASE_URL=with_password(pg().set(database="no_such_database")))
    if case == "unknown role":
        return base_env(CDC_DATABASE_URL=with_password(pg().set(username="no_such_role")))
    if case == "wrong password":
        if trusts_this_host(pg()):
            pytest.skip("the server trusts this host; tests/unit/test_exits.py has this case")
        return base_env(CDC_DATABASE_URL=with_password(pg()), CDC_TABLES="orders")
    if case == "privilege":
        url = request.getfixturevalue("unprivileged")
        return base_env(CDC_DATABASE_URL=url.render_as_string(hide_password=False))
    if case == "TLS required":
        url = pg().set(password=PASSWORD).update_query_dict({"sslmode": "require"})
        return base_env(
            CDC_DATABASE_URL=url.render_as_string(hide_password=False), CDC_TABLES="orders"
        )
    if case in ("AWS credentials", "AWS credentials (sync back)"):
        env = base_env(CDC_BUS="eventbridge", **no_aws_credentials(tmp_path / "home"))
        if case == "AWS credentials (sync back)":
            config = tmp_path / "cdc.toml"
            config.write_text(
                "[[sync_back.mappings]]\n"
                'detail_type = "OrderPlaced"\ntable = "orders"\nop = "upsert"\nkey = ["id"]\n'
                '[sync_back.mappings.columns]\nid = { path = "order_id", type = "int" }\n'
            )
            legacy = sqlite3.connect(tmp_path / "legacy.db")
            legacy.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
            legacy.close()
            database = f"sqlite:///{tmp_path / 'legacy.db'}"
            migrated = run(("cdc", "migrate"), {**env, "CDC_DATABASE_URL": database}, tmp_path)
            assert migrated.returncode == 0, migrated.stderr
            env.update(
                CDC_DATABASE_URL=database,
                CDC_CONFIG=str(config),
                CDC_SYNC_QUEUE_URL="https://sqs.eu-west-1.amazonaws.com/123456789012/sync",
            )
        return env
    if case == "AWS endpoint unreachable":
        return base_env(
            CDC_BUS="eventbridge",
            AWS_ENDPOINT_URL="http://127.0.0.1:1",
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="eu-west-1",
        )
    if case == "throttling at start-up":
        moto = request.getfixturevalue("moto_endpoint")
        plan = FaultPlan(
            operations=frozenset({"AmazonSQS.CreateQueue", "AWSEvents.PutRule"}), throttle=1.0
        )
        proxy = FaultProxy(moto, plan, seed=17)
        proxy.start()
        request.addfinalizer(proxy.stop)
        return base_env(
            AWS_ENDPOINT_URL=proxy.url,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_MAX_ATTEMPTS="2",  # boto3's own retries, kept short
        )
    raise AssertionError(case)


@pytest.mark.integration
@pytest.mark.parametrize("case", list(FAILURES))
def test_an_expected_failure_ends_in_a_line_naming_the_setting(
    case: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    failure = FAILURES[case]
    env = environment(case, request, tmp_path)
    result = run(failure.command, env, tmp_path)
    output = result.stdout + result.stderr
    # At most a few lines: the message, after the embedded demo's own start-up log lines
    lines = result.stderr.splitlines()
    assert "Traceback" not in output and len(lines) <= 3, result.stderr
    assert result.returncode == failure.status, result.stderr
    assert lines[-1].startswith(f"{failure.command[0]}: "), lines[-1]
    for words in failure.says:
        assert words in lines[-1], lines[-1]
    assert PASSWORD not in output


@pytest.mark.integration
def test_the_traceback_comes_with_debug_or_the_debug_log_level(tmp_path: Path) -> None:
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/shop"
    env = base_env(CDC_DATABASE_URL=url, CDC_TABLES="orders")
    for extra, args in ((), ("status", "--debug")), ({"CDC_LOG_LEVEL": "DEBUG"}, ("status",)):
        result = run(("cdc", *args), {**env, **dict(extra)}, tmp_path)
        assert result.returncode == 1
        assert "Traceback" in result.stderr and "Connection refused" in result.stderr
        assert result.stderr.splitlines()[-1].startswith("cdc: CDC_DATABASE_URL: nothing accepts")
        assert PASSWORD not in result.stderr

"""Shared fixtures. Integration tests need a PostgreSQL server: a testcontainers one when a
Docker daemon answers, else the server named by CDC_TEST_DATABASE_URL. Under CI (CI=true) a
missing server fails the run instead of skipping."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from tests.databases import database_name, drop_databases, new_run_id, run_databases


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


# This session's run id (see tests/databases.py for the naming rule): every database the tests
# create carries it. Made here, once per pytest process, never taken from the environment (a
# pytest started by a test must not share its parent's id, whose databases it would drop at its
# end); exported for subprocesses that want it.
RUN_ID = new_run_id()
os.environ["CDC_TEST_RUN_ID"] = RUN_ID

# Servers this session created databases on and that outlive it (not a testcontainers one).
_SERVERS: list[URL] = []


@pytest.fixture(scope="session", autouse=True)
def drop_this_runs_databases() -> Iterator[None]:
    """At the end of the session, drop whatever database of this run is left (a teardown that
    failed), with its replication slots; only sessions on this run's databases are ended."""
    yield
    for server in _SERVERS:
        admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with admin.connect() as connection:
                drop_databases(connection, run_databases(connection, "test", RUN_ID))
        finally:
            admin.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[URL]:
    configured = os.environ.get("CDC_TEST_DATABASE_URL")
    if configured:
        server = make_url(configured).set(drivername="postgresql+psycopg")
        _SERVERS.append(server)
        yield server
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver="psycopg").with_command(
            "postgres -c wal_level=logical"
        ) as container:
            yield make_url(container.get_connection_url())
        return
    message = "no PostgreSQL: set CDC_TEST_DATABASE_URL or start a Docker daemon"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def pg_url(postgres_server: URL) -> Iterator[URL]:
    """A fresh database for one test, cdc_test_<run id>_<random>, dropped afterwards."""
    name = database_name("test", RUN_ID)
    # NullPool: a fresh connection at teardown, even if the server restarted meanwhile
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_server.set(database=name)
    finally:
        with admin.connect() as connection:
            drop_databases(connection, [name])
        admin.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server on 127.0.0.1; boto3 finds it through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
        )
    }
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

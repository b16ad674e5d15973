"""Expected failures end in one or two lines naming the setting and the fix, exit status 2 for a
wrong setting and 1 for the environment, never the password; the traceback only when asked.

The database messages are the texts psycopg (libpq) and the server really give; the local test
server trusts every connection from 127.0.0.1, so a wrong password cannot be produced there and
is checked here only, from the text PostgreSQL sends."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from cdc.core.errors import ConfigError, SetupError, classify_db_error, is_transient_db_error
from cdc.core.exits import CONFIGURATION, ENVIRONMENT, Explained, debug_flag, explain

URL = make_url("postgresql+psycopg://capture:hunter2@db.internal:5433/shop")
AT = 'connection failed: connection to server at "10.0.0.7", port 5433 failed: '


def operational(text: str) -> sa_exc.OperationalError:
    return sa_exc.OperationalError(None, None, psycopg.OperationalError(text))


def programming(text: str) -> sa_exc.ProgrammingError:
    return sa_exc.ProgrammingError("CREATE SCHEMA cdc", None, psycopg.ProgrammingError(text))


# (failure, the error as the driver raises it, kind, retried, exit status, words the message has)
DATABASE_FAILURES: list[tuple[str, Any, str, bool, int, list[str]]] = [
    (
        "wrong port",
        operational(
            AT + "Connection refused\n\tIs the server running on that host and accepting "
            "TCP/IP connections?"
        ),
        "refused",
        True,
        ENVIRONMENT,
        ["db.internal:5433", "host and port"],
    ),
    (
        "unknown host name",
        operational("failed to resolve host 'db.internal': [Errno -2] Name or service not known"),
        "unknown_host",
        True,
        CONFIGURATION,
        ["'db.internal' does not resolve"],
    ),
    (
        "not PostgreSQL",
        operational(AT + "received invalid response to SSL negotiation: H"),
        "not_postgres",
        True,
        CONFIGURATION,
        ["is not PostgreSQL"],
    ),
    (
        "timeout",
        operational("connection timeout expired"),
        "timeout",
        True,
        ENVIRONMENT,
        ["did not answer in time"],
    ),
    (
        "wrong password",
        operational(AT + 'FATAL:  password authentication failed for user "capture"'),
        "auth",
        False,
        CONFIGURATION,
        ["role 'capture'", "password authentication failed", "password in the URL"],
    ),
    (
        "unknown role",
        operational(AT + 'FATAL:  role "capture" does not exist'),
        "unknown_role",
        False,
        CONFIGURATION,
        ["no role 'capture'"],
    ),
    (
        "missing database",
        operational(AT + 'FATAL:  database "shop" does not exist'),
        "no_database",
        False,
        CONFIGURATION,
        ["no database 'shop'"],
    ),
    (
        "pg_hba.conf",
        operational(
            AT + 'FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "capture", '
            'database "shop", no encryption'
        ),
        "not_allowed",
        False,
        ENVIRONMENT,
        ["pg_hba.conf", "sslmode=require"],
    ),
    (
        "privilege",
        programming("permission denied for database shop"),
        "privilege",
        False,
        ENVIRONMENT,
        ["role 'capture' lacks a privilege", "cdc grants"],
    ),
    (
        "TLS required",
        operational(AT + "server does not support SSL, but SSL was required"),
        "tls",
        True,
        CONFIGURATION,
        ["sslmode"],
    ),
    (
        "server restarted",
        operational("terminating connection due to administrator command"),
        "disconnected",
        True,
        ENVIRONMENT,
        ["closed the connection"],
    ),
]


@pytest.mark.parametrize(
    ("failure", "error", "kind", "retried", "status", "says"),
    DATABASE_FAILURES,
    ids=[case[0] for case in DATABASE_FAILURES],
)
def test_database_failures_are_classified_and_told_in_a_line(
    failure: str, error: Any, kind: str, retried: bool, status: int, says: list[str]
) -> None:
    classified = classify_db_error(error)
    assert classified is not None and classified.kind == kind
    assert is_transient_db_error(error) is retried
    explained = explain(error, URL)
    assert explained is not None and explained.status == status
    assert explained.message.startswith("CDC_DATABASE_URL: ")
    assert "\n" not in explained.message and "hunter2" not in explained.message
    for words in says:
        assert words in explained.message


def test_the_replication_connection_errors_are_classified_alike() -> None:
    # The logical source talks to PostgreSQL through psycopg directly, unwrapped.
    error = psycopg.OperationalError('FATAL:  password authentication failed for user "x"')
    assert not is_transient_db_error(error)
    assert is_transient_db_error(psycopg.OperationalError("server closed the connection"))
    assert not is_transient_db_error(psycopg.errors.UndefinedTable('relation "t" does not exist'))
    # START_REPLICATION on a slot of another database fails the same way every time
    elsewhere = psycopg.OperationalError(
        'START_REPLICATION failed: ERROR:  replication slot "cdc_slot" was not created in this '
        "database"
    )
    assert not is_transient_db_error(elsewhere)


def test_what_was_retried_before_is_retried_still() -> None:
    invalidated = sa_exc.OperationalError(None, None, Exception("x"), connection_invalidated=True)
    assert is_transient_db_error(invalidated)
    assert is_transient_db_error(operational("could not receive data from server"))
    assert not is_transient_db_error(operational('relation "cdc.changelog" does not exist'))
    assert not is_transient_db_error(operational("no such table: cdc_changelog"))
    assert not is_transient_db_error(programming("syntax error at or near"))
    assert not is_transient_db_error(ValueError("not a database error"))


def test_a_password_in_the_drivers_text_is_masked() -> None:
    explained = explain(operational("server said hunter2 is wrong and closed the connection"), URL)
    assert explained is not None and "hunter2" not in explained.message
    assert "***" in explained.message


def test_statement_errors_and_unforeseen_exceptions_keep_their_traceback() -> None:
    assert explain(programming('syntax error at or near "SELEC"'), URL) is None
    sqlite = make_url("sqlite:///legacy.db")
    assert explain(operational('near "PUBLICATION": syntax error'), sqlite) is None
    assert explain(KeyError("a bug"), URL) is None


def client_error(code: str, operation: str = "DescribeEventBus") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "told by AWS"}}, operation)


AWS_FAILURES: list[tuple[str, BaseException, int, list[str]]] = [
    ("no credentials", NoCredentialsError(), CONFIGURATION, ["AWS_ACCESS_KEY_ID", "AWS_PROFILE"]),
    ("no region", NoRegionError(), CONFIGURATION, ["AWS_DEFAULT_REGION="]),
    (
        "endpoint unreachable",
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1/"),
        ENVIRONMENT,
        ["http://127.0.0.1:1/", "AWS_ENDPOINT_URL"],
    ),
    (
        "bad key",
        client_error("UnrecognizedClientException"),
        CONFIGURATION,
        ["AWS credentials", "AWS_ACCESS_KEY_ID"],
    ),
    (
        "throttled",
        client_error("ThrottlingException", "CreateEventBus"),
        ENVIRONMENT,
        ["CreateEventBus", "ThrottlingException", "again"],
    ),
    ("denied", client_error("AccessDeniedException"), ENVIRONMENT, ["DescribeEventBus"]),
]


@pytest.mark.parametrize(
    ("failure", "error", "status", "says"), AWS_FAILURES, ids=[c[0] for c in AWS_FAILURES]
)
def test_aws_failures_name_the_setting(
    failure: str, error: BaseException, status: int, says: list[str]
) -> None:
    explained = explain(error)
    assert explained is not None and explained.status == status
    for words in says:
        assert words in explained.message


@pytest.mark.parametrize(
    ("error", "explained"),
    [
        (
            ConfigError("CDC_TABLES", "name them"),
            Explained("configuration error: CDC_TABLES: name them", CONFIGURATION),
        ),
        (SetupError("no primary key"), Explained("no primary key", ENVIRONMENT)),
    ],
)
def test_the_services_own_errors_keep_their_status(error: Exception, explained: Explained) -> None:
    assert explain(error) == explained


def test_a_file_that_cannot_be_used_is_named() -> None:
    missing = FileNotFoundError(2, "No such file or directory", "/nowhere/topology.yaml")
    assert explain(missing) == Explained(
        "/nowhere/topology.yaml: No such file or directory", ENVIRONMENT
    )


def test_debug_is_taken_wherever_it_stands() -> None:
    assert debug_flag(["status", "--debug"]) == (True, ["status"])
    assert debug_flag(["--debug", "status"]) == (True, ["status"])
    assert debug_flag(["status"]) == (False, ["status"])


@pytest.mark.parametrize("debug", [[], ["--debug"]])
def test_an_entry_point_prints_a_line_and_the_traceback_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], debug: list[str]
) -> None:
    from cdc import cli

    def refused(*_: Any) -> int:
        raise operational(AT + "Connection refused")

    monkeypatch.setenv("CDC_DATABASE_URL", str(URL.render_as_string(hide_password=False)))
    monkeypatch.setenv("CDC_TABLES", "orders")
    monkeypatch.setattr(cli, "cmd_status", refused)
    assert cli.main(["status", *debug]) == ENVIRONMENT
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("cdc: CDC_DATABASE_URL: nothing accepts connections")
    assert ("Traceback" in err) is bool(debug)
    assert "hunter2" not in err


def test_sync_back_ends_the_same_way(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sync_back import cli

    def no_credentials(*_: Any) -> int:
        raise NoCredentialsError()

    monkeypatch.setenv("CDC_DATABASE_URL", "sqlite://")
    monkeypatch.setattr(cli, "cmd_run", no_credentials)
    assert cli.main(["run"]) == CONFIGURATION
    err = capsys.readouterr().err
    assert err.startswith("sync-back: AWS credentials: none found") and len(err.splitlines()) == 1


def test_an_unforeseen_failure_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from cdc import cli

    def bug(*_: Any) -> int:
        raise KeyError("a bug")

    monkeypatch.setenv("CDC_TABLES", "widgets")
    monkeypatch.setattr(cli, "cmd_status", bug)
    with pytest.raises(KeyError):
        cli.main(["status"])

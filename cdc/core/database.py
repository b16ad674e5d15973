"""Connections to the legacy database and the service's own migrations."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from cdc.core.dialects import dialect_of
from cdc.core.errors import CdcError, Interrupted, is_transient_db_error
from cdc.core.settings import Settings

log = logging.getLogger(__name__)


def connect(settings: Settings) -> Engine:
    """The engine of a process (``Dialect.create_engine``)."""
    return settings.dialect.create_engine(settings.url)


def alembic_config(settings: Settings) -> Config:
    config = Config()
    # The migrations ship inside the package (cdc.migrations), so this works from a wheel.
    config.set_main_option("script_location", str(resources.files("cdc.migrations")))
    config.attributes["state_schema"] = settings.state_schema
    return config


def migrate(engine: Engine, settings: Settings, revision: str = "head") -> None:
    config = alembic_config(settings)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def drop_state(engine: Engine, settings: Settings) -> None:
    """Remove the service's own schema: every migration undone, then the version table and, on
    PostgreSQL, the schema itself, in one transaction. An object someone else put in the schema
    makes it fail whole (no CASCADE): the schema is left as it was."""
    config = alembic_config(settings)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
        dialect_of(connection).drop_state_schema(connection, settings.state_schema)


def current_revision(engine: Engine, settings: Settings) -> str | None:
    from alembic.runtime.migration import MigrationContext

    table, schema = dialect_of(engine).version_table(settings.state_schema)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": table, "version_table_schema": schema}
        )
        return context.get_current_revision()


def head_revision(settings: Settings) -> str:
    """The newest migration this version of the service ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(settings)).get_current_head()
    assert head is not None
    return head


def knows_revision(settings: Settings, revision: str) -> bool:
    """Whether this version ships ``revision`` (a newer service may have migrated further)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return (
            ScriptDirectory.from_config(alembic_config(settings)).get_revision(revision) is not None
        )
    except CommandError:
        return False


def db_retrying(stop: threading.Event, on_retry: Callable[[], None], what: str) -> Retrying:
    """Retries around database I/O: transient errors only (``is_transient_db_error``), waits
    growing exponentially with full jitter, for as long as it takes; a stop request ends a wait
    with ``Interrupted``, so the caller can leave its work unacknowledged."""

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise Interrupted(f"stop requested while {what} was unavailable")

    def before_sleep(state: RetryCallState) -> None:
        on_retry()
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "%s unavailable (%s); retry %d in %.1fs",
            what,
            error,
            state.attempt_number,
            state.upcoming_sleep,
        )

    return Retrying(
        retry=retry_if_exception(is_transient_db_error),
        wait=wait_random_exponential(multiplier=0.2, max=10),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def conninfo_of(
    url: Any,
    application_name: str = "cdc-logical",
    # The text forms pgtypes reads: ISO dates, and timestamptz in UTC (its fast path).
    options: str | None = "-c DateStyle=ISO -c IntervalStyle=postgres -c TimeZone=UTC",
) -> str:
    """libpq connection string of a SQLAlchemy URL (query parameters such as sslmode included)."""
    from psycopg.conninfo import make_conninfo

    params: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
        "application_name": application_name,
        "options": options,
        "connect_timeout": "10",
    }
    params.update({k: v for k, v in url.query.items() if isinstance(v, str)})
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


def check_migrated(settings: Settings, engine: Engine) -> None:
    revision = current_revision(engine, settings)
    if revision is None:
        raise CdcError(
            f"the service's state schema is missing in {settings.display_url}; "
            "run `cdc migrate` first"
        )
    head = head_revision(settings)
    if revision != head and not knows_revision(settings, revision):
        raise CdcError(
            f"the service's state schema is at revision {revision}, newer than this "
            f"version knows (its newest is {head}); run the newer version"
        )
    if revision != head:
        # An upgraded service on an older schema would fail on a table it does not find yet.
        raise CdcError(
            f"the service's state schema is at revision {revision}, this version "
            f"needs {head}; run `cdc migrate` (it only adds to the state schema)"
        )

"""PostgreSQL: the state tables in their own schema, moments as ``timestamptz``, the origin
as a transaction-local setting (and a logical message for the logical mode)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Connection, DateTime, Engine, Table, create_engine, text
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.engine import URL

from cdc.core.dialects.base import Dialect, StateLayout, utc
from cdc.core.tables import quote_ident

# Sync back emits this transactional logical message first in its transaction (logical mode).
ORIGIN_MESSAGE_PREFIX = "cdc.origin"
# format_type()'s text: "numeric(30,10)", "timestamp(3) with time zone", "text[]", ...
_TYPE_ARGS = re.compile(r"\(([^)]*)\)")


class PostgreSQL(Dialect):
    name = "postgresql"
    url_names = ("postgresql", "postgres")
    url_scheme = "postgresql://"
    url_example = "postgresql://USER:PASSWORD@HOST:5432/DBNAME"
    default_schema = "public"
    strict_types = True
    logical_replication = True
    advisory_locks = True
    operational_statement_errors = False

    def normalized_url(self, url: URL) -> URL:
        return url.set(drivername="postgresql+psycopg")

    def create_engine(self, url: URL) -> Engine:
        # Connections are checked before use, so one that died while idle (database restart,
        # pg_terminate_backend) is replaced instead of failing a batch.
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=2,
            connect_args={"application_name": "cdc", "connect_timeout": 10},
        )

    def database_name(self, url: URL) -> str:
        return url.database or "legacy"

    def location(self, url: URL) -> str:
        host = url.host or "localhost"
        where = f"[{host}]" if ":" in host else host
        return f"{where}:{url.port or 5432}"

    def state_layout(self, schema: str) -> StateLayout:
        return StateLayout(schema, "", BigInteger, DateTime(timezone=True), origin_table=False)

    def create_state_schema(self, connection: Connection, schema: str) -> None:
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}"))

    def drop_state_schema(self, connection: Connection, schema: str) -> None:
        # No CASCADE: an object someone else put in the schema makes this fail whole.
        connection.execute(text(f"DROP TABLE IF EXISTS {quote_ident(schema)}.alembic_version"))
        connection.execute(text(f"DROP SCHEMA IF EXISTS {quote_ident(schema)}"))

    def insert(self, table: Table) -> postgresql.Insert:
        return postgresql.insert(table)

    def stored_moment(self, moment: datetime) -> datetime:
        return moment

    def read_moment(self, stored: datetime | str) -> datetime:
        return utc(stored if isinstance(stored, datetime) else datetime.fromisoformat(stored))

    def reflection_schema(self, schema: str) -> str:
        return schema

    def type_from_text(self, text: str) -> sqltypes.TypeEngine[Any]:
        return pg_type_from_text(text)

    @contextmanager
    def origin_tag(
        self, connection: Connection, origin: str, logical: bool = False, to_commit: bool = False
    ) -> Iterator[None]:
        # The change-log triggers read this setting; is_local ends it with the transaction,
        # so a block that ends with it needs no reset (a round trip saved per transaction).
        connection.execute(text("SELECT set_config('cdc.origin', :o, true)"), {"o": origin})
        if logical:
            # Decoded before the transaction's row changes, since it is written first.
            connection.execute(
                text("SELECT pg_logical_emit_message(true, :p, :o)"),
                {"p": ORIGIN_MESSAGE_PREFIX, "o": origin},
            )
        yield
        if not to_commit:
            connection.execute(text("SELECT set_config('cdc.origin', '', true)"))


def pg_type_from_text(text: str) -> sqltypes.TypeEngine[Any]:
    """The SQLAlchemy type of a PostgreSQL ``format_type()`` text, as far as capture's value
    conversion tells types apart; a name it does not know (an enum, a composite) is NullType."""
    text = text.strip()
    dimensions = 0
    while text.endswith("[]"):
        text, dimensions = text[:-2], dimensions + 1
    found = _TYPE_ARGS.search(text)
    args = [int(a) for a in found[1].split(",") if a.strip().isdigit()] if found else []
    base = " ".join(_TYPE_ARGS.sub("", text).lower().split())
    element: sqltypes.TypeEngine[Any]
    if base == "numeric":
        element = postgresql.NUMERIC(args[0], args[1]) if len(args) == 2 else postgresql.NUMERIC()
    elif base in ("timestamp with time zone", "timestamp without time zone"):
        element = postgresql.TIMESTAMP(timezone=base.endswith("with time zone"))
    else:
        kind = ischema_names.get(base)
        element = kind() if kind is not None else sqltypes.NullType()
    return postgresql.ARRAY(element, dimensions=dimensions) if dimensions else element

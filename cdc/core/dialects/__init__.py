"""The databases the service speaks to, one ``Dialect`` object each (``base``), and how to
find the one of an engine, a connection or a URL.

Adding a database means one module here (and one in ``cdc.capture.dialects`` for capture),
with the migrations' branches for its state tables.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from cdc.core.dialects.base import Dialect, StateLayout, Upsert
from cdc.core.dialects.postgresql import PostgreSQL
from cdc.core.dialects.sqlite import SQLite

POSTGRESQL = PostgreSQL()
SQLITE = SQLite()
DIALECTS: tuple[Dialect, ...] = (POSTGRESQL, SQLITE)
_BY_NAME = {name: dialect for dialect in DIALECTS for name in dialect.url_names}

__all__ = ["DIALECTS", "POSTGRESQL", "SQLITE", "Dialect", "StateLayout", "Upsert", "dialect_of"]


def dialect_of(bind: Engine | Connection | URL) -> Dialect:
    """The dialect of an engine, a connection or a database URL; a URL of a database the
    service does not support is a ``ValueError`` that says which ones it does."""
    name = bind.get_backend_name() if isinstance(bind, URL) else bind.dialect.name
    found = _BY_NAME.get(name)
    if found is None:
        schemes = " or ".join(d.url_scheme for d in DIALECTS)
        raise ValueError(f"the {name!r} database is not supported; use a {schemes} URL")
    return found

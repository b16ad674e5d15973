"""Tagging a writer's transaction with its origin, so capture can recognise (and by default
drop) changes that sync back wrote: the loop-prevention hook of both capture modes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, text

# Sync back emits this transactional logical message first in its transaction (logical mode).
ORIGIN_MESSAGE_PREFIX = "cdc.origin"


@contextmanager
def origin_tag(
    connection: Connection, origin: str, logical: bool = False, to_commit: bool = False
) -> Iterator[None]:
    """Tag the writes made inside this block, in the connection's current transaction;
    ``to_commit``: the block ends with the transaction, so on PostgreSQL the tag needs no
    reset (its setting is transaction-local): a round trip saved per transaction."""
    if connection.dialect.name == "sqlite":
        # SQLite has one writer at a time, so a row in cdc_origin, present only inside this
        # transaction, tags exactly this transaction's writes.
        connection.execute(text("DELETE FROM cdc_origin"))
        connection.execute(text("INSERT INTO cdc_origin (origin) VALUES (:o)"), {"o": origin})
        yield
        connection.execute(text("DELETE FROM cdc_origin"))
        return
    # The change-log triggers read this setting; is_local ends it with the transaction.
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

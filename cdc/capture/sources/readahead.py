"""The PostgreSQL change log, read ahead: the database works while the worker renders.

Waiting for each statement in turn (read a batch, render and publish it, delete it, read the
next) leaves the database idle while Python works and Python idle while the database does.
Here one connection (autocommit: each statement is its own transaction) carries one statement
at a time, sent without waiting (libpq's asynchronous calls) and collected when its result is
needed, so that each runs while Python works:

    read N+1: rows already held; their changes are built while DELETE N runs;
              DELETE N is collected; SELECT N+2 (all rows but N+1's) is sent
    render and publish N+1 while SELECT N+2 runs
    ack N+1:  SELECT N+2 is collected; DELETE N+1 is sent

Why the guarantees of the change-log mode still hold:

- Nothing is skipped: every SELECT reads the lowest visible ids, excluding only the ids of the
  one batch in flight (by exact id, never by range), so a transaction that took a low id and
  committed late is read by the next SELECT that sees it.
- Per-key order: batch N+1 is returned (and so published) only after DELETE N is confirmed; a
  read of the lowest ids sees every earlier change of a key whose later change it sees (see
  ``cdc.capture.sources.changelog``), and the rows it leaves out are exactly those of batch N,
  published already.
- Acknowledgement after the bus: DELETE N is sent by ``ack``, after the bus accepted batch N.
  If its outcome is unknown (the connection failed), it is sent again on a new connection
  before anything else is read: deleting by id is idempotent, and the checkpoint counts a batch
  only when its DELETE removed rows.
"""

from __future__ import annotations

import contextlib
import logging
import select
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import Transformer

log = logging.getLogger(__name__)

# The columns ChangeLogSource._change takes, in its order, with the change's position and
# identity made by the server (which is otherwise idle while the worker renders): exactly what
# _change makes of the first eight columns, so the ids do not depend on which side made them.
_COLUMNS = (
    "id, table_name, op, before::text, after::text, txid, origin, captured_at, "
    "lpad(id::text, 20, '0'), "
    "'changelog:' || id || ':' || coalesce(txid::text, 'None') || ':' || "
    "(extract(epoch FROM captured_at) * 1000000)::bigint"
)


def _int_array(ids: Sequence[int]) -> bytes:
    return ("{" + ",".join(map(str, ids)) + "}").encode()


class ReadAhead:
    """Statements on the change log of one PostgreSQL source, at most one in flight."""

    def __init__(self, conninfo: str, log_table: str, checkpoint_table: str, stream: str) -> None:
        self._conninfo = conninfo
        self._stream = stream.encode()
        self._first = f"SELECT {_COLUMNS} FROM {log_table} ORDER BY id LIMIT $1".encode()
        self._ahead = (
            f"SELECT {_COLUMNS} FROM {log_table} WHERE id <> ALL($1::bigint[]) ORDER BY id LIMIT $2"
        ).encode()
        self._delete = (
            f"WITH gone AS (DELETE FROM {log_table} WHERE id = ANY($1::bigint[]) RETURNING 1) "
            f"INSERT INTO {checkpoint_table} AS c (stream, position, published, updated_at) "
            "SELECT $2, $3, $4, now() WHERE EXISTS (SELECT 1 FROM gone) "
            "ON CONFLICT (stream) DO UPDATE SET "
            "position = greatest(c.position, excluded.position), "
            "published = c.published + excluded.published, updated_at = excluded.updated_at"
        ).encode()
        self._connection: psycopg.Connection[Any] | None = None
        self._transformer: Any = None  # psycopg.adapt.Transformer (C or Python build)
        self._in_flight: str | None = None  # "select" or "delete": what the connection runs
        self._ahead_rows: list[tuple[Any, ...]] | None = None  # the next batch, read ahead
        self._unconfirmed: tuple[bytes, ...] | None = None  # the DELETE whose outcome is unknown

    # -- what ChangeLogSource calls ------------------------------------------------------

    def take(self, limit: int) -> list[tuple[Any, ...]]:
        """The rows of the next batch: those read ahead, or a fresh read of the lowest ids.
        Call ``settle`` before returning them as a batch."""
        with self._or_reset():
            rows = self._ahead_rows
            if rows is not None:
                self._ahead_rows = None
                return rows
            self.settle()
            self._send("select", self._first, (str(limit).encode(),))
            return self._rows(self._collect("select"))

    def settle(self) -> None:
        """Wait until the last acknowledgement is done (sent again if its outcome was lost)."""
        with self._or_reset():
            if self._in_flight == "delete":
                self._collect("delete")
                self._unconfirmed = None
            elif self._unconfirmed is not None and self._in_flight is None:
                log.info("acknowledgement of a batch whose outcome was lost: deleting it again")
                self._send("delete", self._delete, self._unconfirmed)
                self._collect("delete")
                self._unconfirmed = None

    def read_ahead(self, ids: Sequence[int], limit: int) -> None:
        """Start reading the batch after the one of ``ids`` (settled first)."""
        with self._or_reset():
            self._send("select", self._ahead, (_int_array(ids), str(limit).encode()))

    def quiesce(self) -> None:
        """Nothing in flight (before another connection acknowledges a batch)."""
        with self._or_reset():
            if self._in_flight == "select":
                self._ahead_rows = self._rows(self._collect("select"))
            self.settle()

    def acknowledge(self, ids: Sequence[int], position: str, count: int) -> None:
        """Start deleting a published batch, its checkpoint with it."""
        self.quiesce()
        with self._or_reset():
            self._unconfirmed = (
                _int_array(ids),
                self._stream,
                position.encode(),
                str(count).encode(),
            )
            self._send("delete", self._delete, self._unconfirmed)

    @contextlib.contextmanager
    def _or_reset(self) -> Iterator[None]:
        """A failure leaves no connection and nothing read ahead (an unconfirmed DELETE stays,
        to be sent again)."""
        try:
            yield
        except BaseException:
            self.reset()
            raise

    def reset(self) -> None:
        """Drop the connection and what was read ahead; an unconfirmed DELETE is kept."""
        self._ahead_rows = None
        self._in_flight = None
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
            self._transformer = None

    def close(self) -> None:
        try:
            self.settle()
        except Exception as exc:
            log.warning(
                "the last batch's acknowledgement failed (%s); it will be published "
                "again, with the same ids",
                exc,
            )
        self.reset()

    # -- the connection ------------------------------------------------------------------

    def _pg(self) -> pq.abc.PGconn:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(self._conninfo, autocommit=True)
            # Not waiting for an acknowledgement's commit to reach the disk is safe: if a crash
            # loses it, the rows come back and are published again with the same ids.
            self._connection.execute("SET synchronous_commit = off")
            self._transformer = Transformer(self._connection)
        return self._connection.pgconn

    def _send(self, what: str, sql: bytes, params: Sequence[bytes]) -> None:
        assert self._in_flight is None, f"{self._in_flight} still in flight"
        pg = self._pg()
        pg.send_query_params(sql, params)
        while pg.flush():  # 1: not all sent yet (a long id list)
            select.select([], [pg.socket], [], 1.0)
        self._in_flight = what

    def _collect(self, what: str) -> pq.abc.PGresult:
        assert self._in_flight == what, f"collecting {what}, in flight: {self._in_flight}"
        pg = self._pg()
        while True:
            pg.consume_input()
            if not pg.is_busy():
                break
            select.select([pg.socket], [], [], 1.0)
        result = pg.get_result()
        while pg.get_result() is not None:  # the end of this statement's results
            pass
        self._in_flight = None
        if result is None or result.status not in (
            pq.ExecStatus.TUPLES_OK,
            pq.ExecStatus.COMMAND_OK,
        ):
            message = (result.error_message if result else b"no result").decode(errors="replace")
            severity = (
                result.error_field(pq.DiagnosticField.SEVERITY_NONLOCALIZED) if result else None
            )
            if pg.status != pq.ConnStatus.OK or severity in (b"FATAL", b"PANIC"):
                raise psycopg.OperationalError(f"change log {what}: {message.strip()}")
            raise psycopg.DatabaseError(f"change log {what}: {message.strip()}")
        return result

    def _rows(self, result: pq.abc.PGresult) -> list[tuple[Any, ...]]:
        assert self._transformer is not None
        self._transformer.set_pgresult(result)
        rows: list[tuple[Any, ...]] = self._transformer.load_rows(0, result.ntuples, tuple)
        return rows

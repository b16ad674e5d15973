"""The sync-back consumer: SQS messages in, legacy rows out, each message deleted only after
its transaction committed (or its dead letter was stored).

One message's problem is that message's: malformed input, an unmapped type, a value of the
wrong type, a write the legacy database refuses, all become dead letters with the reason and
the raw body, and the consumer goes on. Lost database connections are retried; a stop request
(SIGTERM) lets the message in hand finish, and what was received but not handled returns to
the queue when its visibility timeout ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from cdc.database import db_retrying, is_transient_db_error
from cdc.errors import Interrupted
from cdc.settings import Settings
from cdc.state import StateTables
from sync_back.applier import Applier, Pending
from sync_back.incoming import Invalid, parse_message
from sync_back.mapping import Mappings
from sync_back.rows import to_write

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class ConsumerStats:
    received: int = 0
    applied: int = 0
    duplicates: int = 0
    skipped: int = 0
    parked: int = 0
    dead_letters: int = 0
    own_events: int = 0
    db_retries: int = 0


@dataclass(frozen=True)
class DeadLetter:
    id: int
    message_id: str
    detail_type: str | None
    reason: str
    body: str
    created_at: str
    attempts: int


@dataclass
class Consumer:
    settings: Settings
    engine: Engine
    state: StateTables
    mappings: Mappings
    sqs: Any = None
    stop: threading.Event = field(default_factory=threading.Event)
    stats: ConsumerStats = field(default_factory=ConsumerStats)
    applier: Applier = field(init=False)

    def __post_init__(self) -> None:
        self.applier = Applier(self.engine, self.state, logical=self.settings.capture == "logical")
        for mapping in self.mappings:
            self.applier.check_columns(mapping.table, list(mapping.columns))
        self._retrying = db_retrying(self.stop, self._count_retry, "the legacy database")

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        log.info("syncing back from %s into %s", self.settings.sync_queue_url, self.settings.display_url)
        while not self.stop.is_set():
            self.poll_once()

    def poll_once(self) -> int:
        queue = self.settings.sync_queue_url
        reply = self.sqs.receive_message(
            QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=self.settings.sync_wait_seconds,
            VisibilityTimeout=self.settings.sync_visibility_timeout,
        )
        messages = reply.get("Messages", [])
        if not messages:
            return 0
        started = time.monotonic()

        def tick(index: int) -> None:
            nonlocal started
            if time.monotonic() - started > self.settings.sync_visibility_timeout / 2:
                self._extend_visibility(messages[index:])
                started = time.monotonic()

        # A stop request lets the batch in hand finish (ten messages at most); only a database
        # outage that outlasts the request leaves it to come back from the queue.
        try:
            self.handle_batch([(m["Body"], m["MessageId"]) for m in messages], tick)
        except Interrupted:
            return 0
        # Deleted only now, after their transaction committed: a crash before this line
        # redelivers them, and the inbox makes the second application a no-op.
        self.sqs.delete_message_batch(QueueUrl=queue, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
        ])
        return len(messages)

    def _extend_visibility(self, messages: list[dict[str, Any]]) -> None:
        self.sqs.change_message_visibility_batch(QueueUrl=self.settings.sync_queue_url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"],
             "VisibilityTimeout": self.settings.sync_visibility_timeout}
            for i, m in enumerate(messages)
        ])

    # -- messages ---------------------------------------------------------------------------

    def handle(self, body: str, message_id: str) -> str:
        """Apply one message body; what became of it."""
        return self.handle_batch([(body, message_id)])[0]

    def handle_batch(self, items: Sequence[tuple[str, str]],
                     tick: Callable[[int], None] | None = None) -> list[str]:
        """Apply message bodies, the valid ones in one transaction; what became of each."""
        results: list[str] = ["" for _ in items]
        pending: list[tuple[int, Pending, str]] = []
        for index, (body, message_id) in enumerate(items):
            if tick is not None:
                tick(index)
            self.stats.received += 1
            item = self._prepare(body, message_id)
            if isinstance(item, str):
                results[index] = item
            else:
                pending.append((index, item, message_id))
        if pending:
            outcomes: list[str]
            try:
                outcomes = list(self._with_retry(
                    lambda: self.applier.apply_many([item for _, item, _ in pending])))
            except DBAPIError as exc:
                if is_transient_db_error(exc):
                    raise
                # The legacy database refused one of them: one by one, to find which.
                outcomes = [self._apply_alone(item, message_id) for _, item, message_id in pending]
            for (index, _, _), outcome in zip(pending, outcomes, strict=True):
                results[index] = outcome
                counter = {"applied": "applied", "duplicate": "duplicates", "parked": "parked",
                           "dead_letter": "dead_letters"}.get(outcome, "skipped")
                if counter != "dead_letters":  # counted where stored
                    setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        return results

    def _prepare(self, body: str, message_id: str) -> Pending | str:
        """The write a message asks for, or what became of it when it asks for none."""
        detail_type: str | None = None
        try:
            envelope = parse_message(body, self.settings.sync_max_body_bytes)
            detail_type = envelope.detail_type
            if envelope.source == self.settings.event_source:
                # Our own capture's event came back (a rule too wide): applying it would loop.
                self.stats.own_events += 1
                return "own_event"
            mapping = self.mappings.find(envelope.detail_type, envelope.source)
            if mapping is None:
                raise Invalid(f"no mapping for detail-type {envelope.detail_type!r} "
                              f"(source {envelope.source!r}); add one to [sync_back]")
            return Pending(to_write(envelope, mapping), envelope.detail_type,
                           mapping.version_column, body)
        except Invalid as exc:
            self._dead_letter(message_id, detail_type, exc.reason, body)
            return "dead_letter"

    def _apply_alone(self, item: Pending, message_id: str) -> str:
        try:
            return self._with_retry(lambda: self.applier.apply_many([item])[0])
        except DBAPIError as exc:
            if is_transient_db_error(exc):
                raise
            # A constraint or a value the legacy database cannot hold.
            reason = "the legacy database refused the write: " + str(exc.orig).strip().split("\n")[0]
            self._dead_letter(message_id, item.detail_type, reason, item.body)
            return "dead_letter"

    def _dead_letter(self, message_id: str, detail_type: str | None, reason: str, body: str) -> None:
        log.warning("dead letter: message %s (%s): %s", message_id, detail_type, reason)
        self.stats.dead_letters += 1
        table = self.state.sync_dead_letters
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        now: Any = datetime.now(UTC)
        if self.engine.dialect.name == "sqlite":
            now = now.isoformat()
        statement = insert(table).values(message_id=message_id, detail_type=detail_type,
                                         reason=reason, body=body, created_at=now)
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.message_id],
            set_={"reason": statement.excluded.reason, "attempts": table.c.attempts + 1},
        )

        def store() -> None:
            with self.engine.begin() as connection:
                connection.execute(statement)

        self._with_retry(store)

    # -- dead letters, for the CLI ------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        table = self.state.sync_dead_letters
        with self.engine.connect() as connection:
            rows = connection.execute(select(table).order_by(table.c.id).limit(limit)).mappings()
            return [DeadLetter(r["id"], r["message_id"], r["detail_type"], r["reason"], r["body"],
                               str(r["created_at"]), r["attempts"]) for r in rows]

    def replay(self, letters: list[DeadLetter]) -> dict[str, str]:
        """Apply dead letters again (after the mapping was fixed); those that now go through
        leave the table. What became of each, by message id."""
        results: dict[str, str] = {}
        table = self.state.sync_dead_letters
        for letter in letters:
            outcome = self.handle(letter.body, letter.message_id)
            results[letter.message_id] = outcome
            if outcome != "dead_letter":
                with self.engine.begin() as connection:
                    connection.execute(delete(table).where(table.c.id == letter.id))
        return results

    # -- retries ------------------------------------------------------------------------------

    def _with_retry(self, action: Callable[[], T]) -> T:
        return self._retrying(action)

    def _count_retry(self) -> None:
        self.stats.db_retries += 1

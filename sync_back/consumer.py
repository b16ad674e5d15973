"""The sync-back consumer: SQS messages in, legacy rows out, each message deleted only after
its transaction committed (or its dead letter was stored).

One message's problem is that message's: malformed input, an unmapped type, a value of the
wrong type, a write the legacy database refuses, all become dead letters with the reason and
the raw body, and the consumer goes on. Lost database connections are retried, and so are
SQS calls that fail for a passing reason (throttling, a reset connection): a message applied
but not deleted comes back after its visibility timeout, and the inbox makes it a no-op. A
stop request (SIGTERM) lets the message in hand finish, and what was received but not handled
returns to the queue when its visibility timeout ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from cdc.bus.incoming import Envelope, Invalid, comes_from, parse_message
from cdc.bus.sqs import Queue, Received, SqsClient
from cdc.core.database import db_retrying
from cdc.core.deadletters import DeadLetterStore
from cdc.core.errors import Interrupted, is_transient_db_error
from cdc.core.limits import SQS_RECEIVE_MAX
from cdc.core.settings import Settings
from cdc.core.state import StateTables
from sync_back.applier import Applier
from sync_back.mapping import Mappings
from sync_back.rows import Pending, to_write

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class ConsumerStats:
    """Running counts since the consumer started, for metrics to read."""

    received: int = 0
    applied: int = 0
    duplicates: int = 0
    skipped: int = 0  # not applied by the policy (stale or conflicting)
    stale: int = 0  # ... because older than the row
    conflicts: int = 0  # ... because the legacy application changed the row (skipped or parked)
    parked: int = 0
    dead_letters: int = 0
    own_events: int = 0
    db_retries: int = 0
    queue_retries_by_code: dict[str, int] = field(default_factory=dict)
    undeleted: int = 0  # applied, but left to come back from the queue
    # wall-clock seconds of the last ReceiveMessage that answered; 0 until it happens
    last_polled_at: float = 0.0


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
    sqs: SqsClient | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    stats: ConsumerStats = field(default_factory=ConsumerStats)
    applier: Applier = field(init=False)

    def __post_init__(self) -> None:
        self.applier = Applier(self.engine, self.state, logical=self.settings.capture == "logical")
        for mapping in self.mappings:
            self.applier.check_columns(mapping.table, list(mapping.columns))
        self._retrying = db_retrying(self.stop, self._count_retry, "the legacy database")
        self._letters = DeadLetterStore(self.state.sync_dead_letters, "message_id")
        self.queue = Queue(
            self.sqs,
            self.settings.sync_queue_url,
            "CDC_SYNC_QUEUE_URL",
            self.settings.sync_wait_seconds,
            self.settings.sync_visibility_timeout,
            self.stop,
            self.stats,
        )
        self._own_source = self.settings.event_source  # computed from the URL: once

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Poll until stopped. While a full batch is applied, the next one is received on a
        thread of its own (against SQS a receive takes about as long as applying ten events);
        a partial batch means the queue is nearly empty, and the next receive waits its turn."""
        log.info(
            "syncing back from %s into %s", self.settings.sync_queue_url, self.settings.display_url
        )
        ahead: Received | None = None
        while not self.stop.is_set():
            received = ahead.wait() if ahead is not None else self.queue.receive()
            ahead = None
            if len(received.messages) == SQS_RECEIVE_MAX and not self.stop.is_set():
                ahead = Received.fetch(self.queue)
            self.process(received)
        if ahead is not None:
            ahead.release(self.queue)

    def poll_once(self) -> int:
        return self.process(self.queue.receive())

    def process(self, received: Received) -> int:
        messages = received.messages
        if not messages:
            return 0
        # A stop request lets the batch in hand finish (ten messages at most); only a database
        # outage that outlasts the request leaves it to come back from the queue.
        try:
            self.handle_batch(
                [(m["Body"], m["MessageId"]) for m in messages], self.queue.keep_visible(received)
            )
        except Interrupted:
            return 0
        # Deleted only now, after their transaction committed: a crash before this line
        # redelivers them, and the inbox makes the second application a no-op.
        self.queue.delete(messages)
        return len(messages)

    # -- messages ---------------------------------------------------------------------------

    def handle(self, body: str, message_id: str) -> str:
        """Apply one message body; what became of it."""
        return self.handle_batch([(body, message_id)])[0]

    def handle_batch(
        self, items: Sequence[tuple[str, str]], tick: Callable[[int], None] | None = None
    ) -> list[str]:
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
                outcomes = list(
                    self._with_retry(
                        lambda: self.applier.apply_many([item for _, item, _ in pending])
                    )
                )
            except DBAPIError as exc:
                if is_transient_db_error(exc):
                    raise
                # The legacy database refused one of them: one by one, to find which.
                outcomes = [self._apply_alone(item, message_id) for _, item, message_id in pending]
            for (index, _, _), outcome in zip(pending, outcomes, strict=True):
                results[index] = outcome
                self._count(outcome)
        return results

    def _count(self, outcome: str) -> None:
        stats = self.stats
        if outcome == "applied":
            stats.applied += 1
        elif outcome == "duplicate":
            stats.duplicates += 1
        elif outcome == "parked":
            stats.parked += 1
            stats.conflicts += 1
        elif outcome != "dead_letter":  # dead letters are counted where they are stored
            stats.skipped += 1
            if outcome == "skip_stale":
                stats.stale += 1
            elif outcome == "skip_conflict":
                stats.conflicts += 1

    def _prepare(self, body: str, message_id: str) -> Pending | str:
        """The write a message asks for, or what became of it when it asks for none."""
        detail_type: str | None = None
        event_id: str | None = None
        table: str | None = None
        try:
            envelope = parse_message(body, self.settings.sync_max_body_bytes)
            detail_type = envelope.detail_type
            event_id = event_id_of(envelope, ("id",))  # the default id_path, until mapped
            if comes_from(envelope.source, self._own_source):
                # Our own capture's event came back, directly or republished by the validator
                # (a rule too wide): applying it would loop.
                self.stats.own_events += 1
                return "own_event"
            mapping = self.mappings.find(envelope.detail_type, envelope.source)
            if mapping is None:
                raise Invalid(
                    f"no mapping for detail-type {envelope.detail_type!r} "
                    f"(source {envelope.source!r}); add one to [sync_back]"
                )
            table = mapping.table.qualified
            event_id = event_id_of(envelope, mapping.id_parts)
            return Pending(to_write(envelope, mapping), envelope.detail_type, mapping, body)
        except Invalid as exc:
            self._dead_letter(message_id, detail_type, exc.reason, body, event_id, table)
            return "dead_letter"

    def _apply_alone(self, item: Pending, message_id: str) -> str:
        try:
            return self._with_retry(lambda: self.applier.apply_many([item])[0])
        except DBAPIError as exc:
            if is_transient_db_error(exc):
                raise
            # A constraint or a value the legacy database cannot hold.
            reason = "the legacy database refused the write: " + self.applier.refusal(item, exc)
            self._dead_letter(
                message_id,
                item.detail_type,
                reason,
                item.body,
                item.write.event_id,
                item.write.table.qualified,
            )
            return "dead_letter"

    def _dead_letter(
        self,
        message_id: str,
        detail_type: str | None,
        reason: str,
        body: str,
        event_id: str | None = None,
        table_name: str | None = None,
    ) -> None:
        # Before the body is parsed (or mapped) its event id (or table) is not known.
        log.warning(
            "dead letter: event %s of %s (message %s, %s): %s",
            event_id or "unknown",
            table_name or "no table",
            message_id,
            detail_type,
            reason,
        )
        self.stats.dead_letters += 1
        letter = {
            "message_id": message_id,
            "detail_type": detail_type,
            "reason": reason,
            "body": body,
        }

        def store() -> None:
            with self.engine.begin() as connection:
                self._letters.store(connection, [letter])

        self._with_retry(store)

    # -- dead letters, for the CLI ------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self.engine.connect() as connection:
            return [
                DeadLetter(
                    r["id"],
                    r["message_id"],
                    r["detail_type"],
                    r["reason"],
                    r["body"],
                    str(r["created_at"]),
                    r["attempts"],
                )
                for r in self._letters.listing(connection, limit)
            ]

    def replay(self, letters: list[DeadLetter]) -> dict[str, str]:
        """Apply dead letters again (after the mapping was fixed); those that now go through
        leave the table. What became of each, by message id."""
        results: dict[str, str] = {}
        for letter in letters:
            outcome = self.handle(letter.body, letter.message_id)
            results[letter.message_id] = outcome
            if outcome != "dead_letter":
                with self.engine.begin() as connection:
                    self._letters.remove(connection, [letter.message_id])
        return results

    # -- retries ------------------------------------------------------------------------------

    def _with_retry(self, action: Callable[[], T]) -> T:
        return self._retrying(action)

    def _count_retry(self) -> None:
        self.stats.db_retries += 1


def event_id_of(envelope: Envelope, id_parts: tuple[str, ...]) -> str:
    """The event's id for a log line, as ``rows.to_write`` finds it (Detail at the mapping's
    ``id_path``, else the envelope id), without its checks: a dead letter's id may be bad."""
    node: Any = envelope.detail
    for part in id_parts:
        node = node.get(part) if isinstance(node, dict) else None
    return node if id_parts and isinstance(node, str) and node else envelope.envelope_id

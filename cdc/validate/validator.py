"""The validator: events from the central account's validation queue, checked against the
schema of their DetailType, republished once each as ``valid.<source>`` to the central bus.

For each batch of SQS messages (ten at most), in this order:

1. judge each message (pure): not an event, no schema for its type, or invalid -> a dead
   letter with every error; a source already starting with ``valid.`` -> left alone (sending
   it again would loop); otherwise an entry for the central bus;
2. one transaction stores the dead letters and *claims* each event to republish (a row per
   source and event id, see ``cdc.validate.state``); only the claims this batch won are sent;
3. PutEvents (``EventBridgePublisher``: batching, retries, size limit);
4. one transaction records the bus's verdict (published, or rejected with a dead letter);
5. the messages are deleted from the queue.

A crash between 2 and 4 leaves claims whose outcome is unknown ("in doubt"): a redelivered
message finds the claim and is not sent again. So an event reaches the central bus at most
once; the price is that an event claimed just before a crash may never reach it, and is listed
by ``cdc validate --in-doubt`` for an operator to resend.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Engine

from cdc.bus.events import BusEntry
from cdc.bus.incoming import VALID_PREFIX, Invalid, parse_message, text_problem
from cdc.bus.jsontext import exact_json
from cdc.bus.publishers import Publisher
from cdc.bus.sqs import Queue, SqsClient
from cdc.core.database import db_retrying
from cdc.core.errors import Interrupted
from cdc.core.limits import DEFAULT_BODY_BYTES
from cdc.core.settings import Settings
from cdc.core.state import StateTables
from cdc.validate import state
from cdc.validate.registry import SchemaRegistry
from cdc.validate.state import Claim, ValidationDeadLetter

log = logging.getLogger(__name__)

Outcome = Literal[
    "republished", "duplicate", "in_doubt", "dead_letter", "already_valid", "rejected"
]


def valid_source(source: str) -> str:
    return VALID_PREFIX + source


@dataclass(frozen=True, slots=True)
class Judged:
    """What one message asks for: an entry to republish, a dead letter, or nothing."""

    message_id: str
    body: str
    outcome: Literal["republish", "dead_letter", "already_valid"]
    source: str | None = None
    detail_type: str | None = None
    event_id: str | None = None
    entry: BusEntry | None = None
    reason: str = ""
    errors: tuple[str, ...] = ()

    @property
    def key(self) -> state.Key:
        return (self.source or "", self.event_id or "")

    def dead_letter(self) -> ValidationDeadLetter:
        return ValidationDeadLetter(
            self.message_id,
            self.event_id,
            self.source,
            self.detail_type,
            self.reason,
            self.errors or (self.reason,),
            self.body,
        )


def judge(
    body: str, message_id: str, registry: SchemaRegistry, max_body_bytes: int = DEFAULT_BODY_BYTES
) -> Judged:
    """The verdict on one SQS body (an EventBridge envelope); pure."""
    try:
        envelope = parse_message(body, max_body_bytes)
    except Invalid as exc:
        return Judged(
            message_id,
            body,
            "dead_letter",
            reason=f"not an event: {exc.reason}",
            errors=(exc.reason,),
        )
    source, detail_type, detail = envelope.source, envelope.detail_type, envelope.detail
    if source.startswith(VALID_PREFIX):
        return Judged(message_id, body, "already_valid", source, detail_type)
    raw_id = detail.get("id")
    event_id = (
        raw_id
        if isinstance(raw_id, str) and raw_id and not text_problem(raw_id)
        else envelope.envelope_id
    )
    errors = registry.errors(detail_type, detail)
    if errors is None:
        reason = f"no schema for DetailType {detail_type!r}; add one to CDC_SCHEMAS_DIR"
        return Judged(
            message_id,
            body,
            "dead_letter",
            source,
            detail_type,
            event_id,
            reason=reason,
            errors=(reason,),
        )
    if errors:
        return Judged(
            message_id,
            body,
            "dead_letter",
            source,
            detail_type,
            event_id,
            reason=f"{len(errors)} validation error{'s' if len(errors) > 1 else ''}: {errors[0]}",
            errors=tuple(errors),
        )
    table = detail.get("table")
    entry = BusEntry.create(
        event_id,
        table if isinstance(table, str) else "",
        valid_source(source),
        detail_type,
        envelope.time or datetime.now(UTC),
        exact_json(detail),
    )
    return Judged(message_id, body, "republish", source, detail_type, event_id, entry)


@dataclass
class ValidatorStats:
    received: int = 0
    republished: int = 0
    duplicates: int = 0
    in_doubt: int = 0
    dead_letters: int = 0
    already_valid: int = 0
    rejected: int = 0
    db_retries: int = 0
    queue_retries_by_code: dict[str, int] = field(default_factory=dict)
    undeleted: int = 0
    last_polled_at: float = 0.0

    def summary(self) -> str:
        """The counts for the stop line, in words."""
        retries = sum(self.queue_retries_by_code.values())
        return (
            f"{self.received} messages received: {self.republished} republished, "
            f"{self.duplicates} duplicates, {self.dead_letters} dead letters, "
            f"{self.in_doubt} in doubt, {self.already_valid} already valid, "
            f"{self.rejected} rejected by the central bus; {self.db_retries} database and "
            f"{retries} queue retries"
        )


@dataclass
class Validator:
    settings: Settings
    engine: Engine
    tables: StateTables
    registry: SchemaRegistry
    # Sends to the central bus. Its retries must not be cut short by a stop request: the
    # batch's claims are committed, so a batch abandoned mid-send would be in doubt.
    publisher: Publisher
    sqs: SqsClient | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    stats: ValidatorStats = field(default_factory=ValidatorStats)
    # Test hook, called with "claimed", "published", "recorded" after each step of a batch.
    failpoint: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self._retrying = db_retrying(self.stop, self._count_retry, "the state database")
        self.queue = Queue(
            self.sqs,
            self.settings.validate_queue_url,
            "CDC_VALIDATE_QUEUE_URL",
            self.settings.validate_wait_seconds,
            self.settings.validate_visibility_timeout,
            self.stop,
            self.stats,
        )

    def run(self) -> None:
        log.info(
            "validating events from %s against %d schemas; valid ones go to the %s bus",
            self.settings.validate_queue_url,
            len(self.registry),
            self.settings.central_bus_name,
        )
        while not self.stop.is_set():
            self.poll_once()
        log.info("stopped after %s", self.stats.summary())

    def poll_once(self) -> int:
        """One receive-handle-delete round; how many messages it handled."""
        messages = self.queue.receive().messages
        if not messages:
            return 0
        try:
            self.handle_batch([(m["Body"], m["MessageId"]) for m in messages])
        except Interrupted:
            # Stopped while the database was away: the messages come back from the queue.
            return 0
        # Deleted only now: a crash before this line redelivers them, and their claims (or
        # dead letters, stored by message id) make the second pass change nothing.
        self.queue.delete(messages)
        return len(messages)

    def handle_batch(self, items: Sequence[tuple[str, str]]) -> list[Outcome]:
        """Judge, claim, republish and record a batch of (body, message id); the outcome of
        each message."""
        judged = [judge(body, message_id, self.registry) for body, message_id in items]
        self.stats.received += len(judged)
        letters = [j.dead_letter() for j in judged if j.outcome == "dead_letter"]
        claims: dict[state.Key, Claim] = {}
        for j in judged:
            if j.outcome == "republish" and j.entry is not None and j.key not in claims:
                claims[j.key] = Claim(j.key, j.detail_type or "", j.message_id, j.entry)
        token = uuid.uuid4().hex

        def claim_all() -> dict[state.Key, tuple[str, str]]:
            with self.engine.begin() as connection:
                state.store_dead_letters(connection, self.tables, letters)
                return state.claim(connection, self.tables, token, list(claims.values()))

        verdicts = self._retrying(claim_all)
        mine = [
            claims[key]
            for key, (status, owner) in verdicts.items()
            if owner == token and status == state.CLAIMED and key in claims
        ]
        self._hook("claimed")
        rejections = self.publisher.publish([c.entry for c in mine]) if mine else []
        self._hook("published")
        rejected = {
            (r.entry.source.removeprefix(VALID_PREFIX), r.entry.event_id): r.reason
            for r in rejections
        }
        accepted = [c.key for c in mine if c.key not in rejected]
        refused = [c for c in mine if c.key in rejected]
        bodies = {j.key: j.body for j in judged}

        def record() -> None:
            with self.engine.begin() as connection:
                state.settle(connection, self.tables, accepted, [c.key for c in refused], token)
                state.store_dead_letters(
                    connection,
                    self.tables,
                    [
                        ValidationDeadLetter(
                            c.message_id,
                            c.key[1],
                            c.key[0],
                            c.detail_type,
                            f"the central bus refused the event: {rejected[c.key]}",
                            (rejected[c.key],),
                            bodies[c.key],
                        )
                        for c in refused
                    ],
                )

        if mine:
            self._retrying(record)
        self._hook("recorded")
        return self._outcomes(judged, verdicts, token, set(accepted))

    def _outcomes(
        self,
        judged: Sequence[Judged],
        verdicts: dict[state.Key, tuple[str, str]],
        token: str,
        accepted: set[state.Key],
    ) -> list[Outcome]:
        outcomes: list[Outcome] = []
        seen: set[state.Key] = set()
        for j in judged:
            outcome: Outcome
            if j.outcome != "republish":
                outcome = j.outcome
                if outcome == "dead_letter":
                    log.warning(
                        "dead letter: event %s (%s from %s), message %s: %s",
                        j.event_id or "unknown",
                        j.detail_type,
                        j.source,
                        j.message_id,
                        j.reason,
                    )
            elif j.key in seen:
                outcome = "duplicate"  # the same event twice in one batch
            else:
                seen.add(j.key)
                status, owner = verdicts.get(j.key, (state.CLAIMED, ""))
                if owner == token:
                    outcome = "republished" if j.key in accepted else "rejected"
                elif status == state.CLAIMED:
                    # Claimed by a run that crashed before it learned the bus's verdict (or by
                    # another validator, right now): sending it again could publish it twice.
                    log.warning(
                        "event %s of %s is in doubt (claimed, never confirmed); not republished",
                        j.event_id,
                        j.source,
                    )
                    outcome = "in_doubt"
                else:
                    outcome = "duplicate"
            counter = {
                "republished": "republished",
                "duplicate": "duplicates",
                "in_doubt": "in_doubt",
                "dead_letter": "dead_letters",
                "already_valid": "already_valid",
                "rejected": "rejected",
            }[outcome]
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            outcomes.append(outcome)
        return outcomes

    def _hook(self, step: str) -> None:
        if self.failpoint is not None:
            self.failpoint(step)

    def _count_retry(self) -> None:
        self.stats.db_retries += 1


def resend_in_doubt(
    engine: Engine, tables: StateTables, publisher: Publisher, claims: Sequence[state.InDoubt]
) -> tuple[int, list[str]]:
    """An operator's decision: send claims in doubt again (after checking the consumers did
    not get them). How many the bus accepted, and why the others were refused."""
    entries = [c.entry for c in claims if c.entry is not None]
    rejections = publisher.publish(entries) if entries else []
    refused = {(r.entry.source.removeprefix(VALID_PREFIX), r.entry.event_id) for r in rejections}
    accepted = [c.key for c in claims if c.entry is not None and c.key not in refused]
    with engine.begin() as connection:
        state.settle(connection, tables, accepted, refused)
    return len(accepted), [f"{r.entry.event_id}: {r.reason}" for r in rejections]

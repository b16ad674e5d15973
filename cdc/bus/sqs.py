"""An SQS queue as the service's consumers use it (sync back, the validator).

Receive (long poll), keep the batch in hand invisible while it is worked on, delete it only
after the work committed, or give it back at once. Failures that pass (throttling, a reset
connection) are counted by error code and retried with growing, jittered waits; a message whose
delete keeps failing comes back after its visibility timeout, which the consumers' own records
(inbox, claims) make harmless. Anything else (no such queue, no permission) raises a
``PermanentError`` that says what to fix.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NotRequired, Protocol, TypedDict

from botocore.exceptions import ClientError

from cdc.core.errors import (
    ConfigError,
    PermanentError,
    classify_aws_error,
    is_transient_transport_error,
)
from cdc.core.limits import SQS_RECEIVE_MAX

log = logging.getLogger(__name__)

# A failed delete is tried again this many times in all; what is still not deleted comes back
# from the queue after its visibility timeout (and is then a duplicate the consumer absorbs).
DELETE_ATTEMPTS = 5
# SQS error codes meaning the queue URL names no queue: retrying cannot help.
QUEUE_MISSING_CODES = frozenset({"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"})


def backoff(attempt: int, initial: float = 0.2, maximum: float = 10.0) -> float:
    """Seconds to wait before try ``attempt + 1``: exponential, with full jitter."""
    return random.uniform(0, min(maximum, initial * 2**attempt))


class DeleteEntry(TypedDict):
    Id: str
    ReceiptHandle: str


class VisibilityEntry(TypedDict):
    Id: str
    ReceiptHandle: str
    VisibilityTimeout: NotRequired[int]


class SqsClient(Protocol):
    """The SQS calls a queue makes: boto3's SQS client has them, and so do the tests' fakes."""

    def receive_message(
        self,
        *,
        QueueUrl: str,
        MaxNumberOfMessages: int,
        WaitTimeSeconds: int,
        VisibilityTimeout: int,
    ) -> Mapping[str, Any]: ...

    def delete_message_batch(
        self, *, QueueUrl: str, Entries: Sequence[DeleteEntry]
    ) -> Mapping[str, Any]: ...

    def change_message_visibility_batch(
        self, *, QueueUrl: str, Entries: Sequence[VisibilityEntry]
    ) -> Mapping[str, Any]: ...


class QueueStats(Protocol):
    """The counters a queue keeps in its consumer's stats (read by /metrics)."""

    queue_retries_by_code: dict[str, int]
    undeleted: int  # handled, but left to come back from the queue
    last_polled_at: float  # wall-clock seconds of the last ReceiveMessage that answered


@dataclass
class Received:
    """Messages of one ReceiveMessage call, and when they arrived (their visibility clock)."""

    messages: list[dict[str, Any]]
    at: float = field(default_factory=lambda: time.monotonic())
    _thread: threading.Thread | None = None
    _result: list[Received] = field(default_factory=list)
    _error: list[BaseException] = field(default_factory=list)

    @classmethod
    def fetch(cls, queue: Queue) -> Received:
        """Receive on a daemon thread (a stop never waits for a long poll to end)."""
        pending = cls([])

        def receive() -> None:
            try:
                pending._result.append(queue.receive())
            except BaseException as exc:  # raised again by wait(), on the consumer's thread
                pending._error.append(exc)

        pending._thread = threading.Thread(target=receive, name="sqs-receive", daemon=True)
        pending._thread.start()
        return pending

    def wait(self) -> Received:
        assert self._thread is not None
        self._thread.join()
        if self._error:
            raise self._error[0]
        return self._result[0]

    def release(self, queue: Queue) -> None:
        """Stopping with a batch received ahead: give it back to the queue at once, if it
        arrives within a second (else its visibility timeout returns it)."""
        assert self._thread is not None
        self._thread.join(1.0)
        if self._result and self._result[0].messages:
            queue.release(self._result[0].messages)


class Queue:
    def __init__(
        self,
        sqs: SqsClient | None,
        url: str | None,
        setting: str,
        wait_seconds: int,
        visibility_timeout: int,
        stop: threading.Event,
        stats: QueueStats,
    ) -> None:
        self.sqs = sqs
        self.url = url
        self.setting = setting  # the setting that names the queue, for error messages
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self.stop = stop
        self.stats = stats
        self._receive_failures = 0

    def _target(self) -> tuple[SqsClient, str]:
        """The client and the queue's URL; a queue built without them (a consumer that only
        lists dead letters) says so when it is used."""
        if self.sqs is None or not self.url:
            raise ConfigError(self.setting, "no SQS queue to use here; name the queue to use one")
        return self.sqs, self.url

    def receive(self) -> Received:
        sqs, url = self._target()
        try:
            reply = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=SQS_RECEIVE_MAX,
                WaitTimeSeconds=self.wait_seconds,
                VisibilityTimeout=self.visibility_timeout,
            )
        except Exception as exc:
            self._receive_failures += 1
            self._failed("ReceiveMessage", exc, self._receive_failures)
            return Received([])
        self._receive_failures = 0
        self.stats.last_polled_at = time.time()
        return Received(reply.get("Messages", []))

    def keep_visible(self, received: Received) -> Callable[[int], None]:
        """A tick for the work on ``received``, called before each message: past half the
        visibility timeout, the messages still to do are made invisible for another one."""
        messages = received.messages
        started = received.at  # their visibility timeout runs from the receive

        def tick(index: int) -> None:
            nonlocal started
            if time.monotonic() - started > self.visibility_timeout / 2:
                self.extend(messages[index:])
                started = time.monotonic()

        return tick

    def delete(self, messages: list[dict[str, Any]]) -> None:
        sqs, url = self._target()
        pending = {str(i): m["ReceiptHandle"] for i, m in enumerate(messages)}
        for attempt in range(1, DELETE_ATTEMPTS + 1):
            try:
                reply = sqs.delete_message_batch(
                    QueueUrl=url,
                    Entries=[{"Id": i, "ReceiptHandle": handle} for i, handle in pending.items()],
                )
            except Exception as exc:
                codes = [self.error_code("DeleteMessageBatch", exc)] * len(pending)
            else:
                # A sender fault (an expired receipt handle) means the message is visible
                # again already; only the others are worth another try.
                failed = [f for f in reply.get("Failed", []) if not f.get("SenderFault")]
                pending = {f["Id"]: pending[f["Id"]] for f in failed if f.get("Id") in pending}
                codes = [f.get("Code") or "Unknown" for f in failed]
            if not pending:
                return
            self._count(codes)
            if attempt < DELETE_ATTEMPTS:
                self.stop.wait(backoff(attempt))
        self.stats.undeleted += len(pending)
        log.warning(
            "%d handled messages could not be deleted from the queue (%s); they will "
            "come back after the visibility timeout and be skipped as duplicates",
            len(pending),
            ",".join(sorted(set(codes))),
        )

    def release(self, messages: list[dict[str, Any]]) -> None:
        """Make received, unhandled messages visible again now (for another consumer)."""
        sqs, url = self._target()
        try:
            sqs.change_message_visibility_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(messages)
                ],
            )
        except Exception as exc:  # they come back after their visibility timeout anyway
            log.warning("could not release %d received messages (%s)", len(messages), exc)

    def extend(self, messages: list[dict[str, Any]]) -> None:
        sqs, url = self._target()
        try:
            sqs.change_message_visibility_batch(
                QueueUrl=url,
                Entries=[
                    {
                        "Id": str(i),
                        "ReceiptHandle": m["ReceiptHandle"],
                        "VisibilityTimeout": self.visibility_timeout,
                    }
                    for i, m in enumerate(messages)
                ],
            )
        except Exception as exc:
            # The work goes on: if the messages come back meanwhile, whoever receives them
            # finds them recorded (inbox, claims).
            code = self.error_code("ChangeMessageVisibilityBatch", exc)
            self._count([code])
            log.warning("could not extend the visibility of %d messages (%s)", len(messages), code)

    def _failed(self, call: str, exc: Exception, failures: int) -> None:
        """A transient SQS failure: count it and wait (growing, with jitter) before the next
        call; anything else raises."""
        code = self.error_code(call, exc)
        self._count([code])
        delay = backoff(failures)
        log.warning(
            "SQS %s failed with %s; attempt %d, retrying in %.2fs", call, code, failures, delay
        )
        self.stop.wait(delay)

    def error_code(self, call: str, exc: Exception) -> str:
        """The code of a failure worth retrying; raises the ones that are not."""
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code") or "Unknown"
            message = exc.response.get("Error", {}).get("Message", "")
            if code in QUEUE_MISSING_CODES:
                raise PermanentError(
                    f"SQS {call} failed with {code}: {self.setting} "
                    f"{self.url!r} names no queue in this account and "
                    "region"
                ) from exc
            if classify_aws_error(code) != "retry":
                raise PermanentError(
                    f"SQS {call} failed with {code}: {message}. Check the AWS "
                    "credentials and that the IAM identity may call "
                    "sqs:ReceiveMessage, sqs:DeleteMessage and "
                    "sqs:ChangeMessageVisibility on the queue."
                ) from exc
            return code
        if is_transient_transport_error(exc):
            return type(exc).__name__
        raise exc

    def _count(self, codes: Sequence[str]) -> None:
        retries = self.stats.queue_retries_by_code
        for code in codes:
            retries[code] = retries.get(code, 0) + 1

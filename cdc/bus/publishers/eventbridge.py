"""The EventBridge publisher: bus entries out through PutEvents, retried until each has a verdict.

Entries are packed into calls of at most ten entries and at most ``max_entry_bytes`` in all
(AWS caps a PutEvents request as well as each entry: ``cdc.core.limits``). A call can half
succeed: the response lists a result per entry, and only the entries that failed with a
retryable code are sent again. Waits grow exponentially with full jitter and go on until the
bus accepts or the worker asks to stop, so no event is ever dropped for being unlucky.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import boto3
import botocore.config
import tenacity
from botocore.exceptions import ClientError

from cdc.bus.events import BusEntry
from cdc.bus.publishers import Rejection
from cdc.core.errors import (
    Interrupted,
    PermanentError,
    classify_aws_error,
    is_transient_transport_error,
)
from cdc.core.limits import DEFAULT_ENTRY_BYTES, PUT_EVENTS_MAX_ENTRIES

if TYPE_CHECKING:
    from mypy_boto3_events.type_defs import (
        PutEventsRequestEntryTypeDef,
        PutEventsResponseTypeDef,
    )

log = logging.getLogger(__name__)

# Codes of our own for whole-call failures that carry no AWS code, as they appear in the log
# and in ``PublishStats.retries_by_code``.
ENTRIES_MISMATCH = "EntriesMismatch"
MISSING_EVENT_ID = "MissingEventId"


class EventsClient(Protocol):
    """The one call we make on a boto3 ``events`` client."""

    def put_events(
        self, *, Entries: Sequence[PutEventsRequestEntryTypeDef]
    ) -> PutEventsResponseTypeDef: ...


@dataclass(slots=True)
class PublishStats:
    """Running counts since the publisher was built, for metrics to read."""

    calls: int = 0
    entries_accepted: int = 0
    entries_retried: int = 0
    retries_by_code: dict[str, int] = field(default_factory=dict)
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one PutEvents call left to do: entries refused for good, entries to send again."""

    rejected: tuple[Rejection, ...] = ()
    retry: tuple[BusEntry, ...] = ()
    code: str = ""  # why ``retry`` is not empty, for the log


def pack(
    entries: Sequence[BusEntry], max_bytes: int, max_entries: int = PUT_EVENTS_MAX_ENTRIES
) -> list[list[BusEntry]]:
    """Split ``entries``, in order, into calls of at most ``max_entries`` and ``max_bytes``.

    Each entry must fit ``max_bytes`` on its own; ``publish`` rejects the ones that do not.
    """
    calls: list[list[BusEntry]] = []
    current: list[BusEntry] = []
    current_bytes = 0
    for entry in entries:
        if current and (len(current) == max_entries or current_bytes + entry.size > max_bytes):
            calls.append(current)
            current, current_bytes = [], 0
        current.append(entry)
        current_bytes += entry.size
    if current:
        calls.append(current)
    return calls


class EventBridgePublisher:
    def __init__(
        self,
        client: EventsClient,
        event_bus_name: str,
        max_entry_bytes: int = DEFAULT_ENTRY_BYTES,
        stop: threading.Event | None = None,
        initial_backoff: float = 0.1,
        max_backoff: float = 20.0,
        concurrency: int = 4,
    ) -> None:
        self.event_bus_name = event_bus_name
        self.stats = PublishStats()
        self._stats_lock = threading.Lock()
        # PutEvents calls of one batch go out side by side: each waits tens of milliseconds on
        # AWS, and their order does not matter (``position`` carries the order; the batch is
        # acknowledged only when every call has its verdict).
        self._pool = (
            ThreadPoolExecutor(concurrency, thread_name_prefix="put-events")
            if concurrency > 1
            else None
        )
        self._client = client
        self._max_entry_bytes = max_entry_bytes
        # An event nobody sets: ``wait`` on it is a plain sleep.
        self._stop = stop if stop is not None else threading.Event()
        self._wait = tenacity.wait_random_exponential(multiplier=initial_backoff, max=max_backoff)

    @classmethod
    def from_environment(
        cls,
        event_bus_name: str,
        max_entry_bytes: int = DEFAULT_ENTRY_BYTES,
        stop: threading.Event | None = None,
        concurrency: int = 4,
    ) -> EventBridgePublisher:
        """A publisher on a client that boto3 configures from AWS_* variables and credentials."""
        config = botocore.config.Config(
            # Our own loop retries, and only the entries that failed. botocore's
            # ``max_attempts`` counts retries after the first try (1 would still mean two
            # sends); ``total_max_attempts`` counts every try, so 1 turns its retries off.
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=max(10, concurrency),
        )
        client = boto3.client("events", config=config)
        return cls(client, event_bus_name, max_entry_bytes, stop, concurrency=concurrency)

    def publish(self, entries: Sequence[BusEntry]) -> list[Rejection]:
        rejected = [
            Rejection(
                entry,
                f"entry is {entry.size} bytes, over the maximum of "
                f"{self._max_entry_bytes} (CDC_MAX_ENTRY_BYTES)",
            )
            for entry in entries
            if entry.size > self._max_entry_bytes
        ]
        sendable = [entry for entry in entries if entry.size <= self._max_entry_bytes]
        calls = pack(sendable, self._max_entry_bytes)
        if self._pool is not None and len(calls) > 1:
            # map re-raises the first failure (Interrupted, PermanentError) here, in order.
            for outcome in self._pool.map(self._deliver, calls):
                rejected.extend(outcome)
        else:
            for call in calls:
                rejected.extend(self._deliver(call))
        with self._stats_lock:
            self.stats.rejected += len(rejected)
        return rejected

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        close = getattr(self._client, "close", None)
        if callable(close):
            close()

    def _deliver(self, entries: Sequence[BusEntry]) -> list[Rejection]:
        """Send ``entries``, then again whatever came back retryable, until nothing is left."""
        pending = tuple(entries)
        rejected: list[Rejection] = []

        def put_pending() -> _Outcome:
            nonlocal pending
            outcome = self._put(pending)
            pending = outcome.retry
            rejected.extend(outcome.rejected)
            return outcome

        # A fresh Retrying per delivery: its attempt count (and so the wait) starts over, and
        # the recursive deliveries of a split call each get their own.
        tenacity.Retrying(
            retry=tenacity.retry_if_result(lambda outcome: bool(outcome.retry)),
            wait=self._wait,
            stop=tenacity.stop_never,
            sleep=self._sleep,
            before_sleep=self._log_retry,
        )(put_pending)
        return rejected

    def _put(self, entries: Sequence[BusEntry]) -> _Outcome:
        """One PutEvents call and the verdict on each of its entries."""
        with self._stats_lock:
            self.stats.calls += 1
        try:
            response = self._client.put_events(Entries=[self._request_entry(e) for e in entries])
        except ClientError as exc:
            return self._call_failed(entries, exc)
        except Exception as exc:
            if not is_transient_transport_error(exc):
                raise
            return self._again(entries, [type(exc).__name__] * len(entries))

        results = response.get("Entries", [])
        if len(results) != len(entries):
            # Results pair with entries by position only; without one per entry we cannot
            # tell which were accepted, so all go again (a duplicate beats a loss).
            return self._again(entries, [ENTRIES_MISMATCH] * len(entries))

        rejected: list[Rejection] = []
        retry: list[BusEntry] = []
        retry_codes: list[str] = []
        accepted = 0
        # FailedEntryCount is not trusted on its own: the per-entry results decide.
        for entry, result in zip(entries, results, strict=True):
            code = result.get("ErrorCode")
            if not code and result.get("EventId"):
                accepted += 1
                continue
            # A result with neither an id nor a code does not show the entry was accepted.
            verdict = classify_aws_error(code) if code else "retry"
            code = code or MISSING_EVENT_ID
            if verdict == "fatal":
                raise PermanentError(self._fatal_message(code, result.get("ErrorMessage", "")))
            if verdict == "reject":
                rejected.append(Rejection(entry, f"{code}: {result.get('ErrorMessage', '')}"))
            else:
                retry.append(entry)
                retry_codes.append(code)
        with self._stats_lock:
            self.stats.entries_accepted += accepted
        return replace(self._again(retry, retry_codes), rejected=tuple(rejected))

    def _call_failed(self, entries: Sequence[BusEntry], exc: ClientError) -> _Outcome:
        error = exc.response.get("Error", {})
        code = error.get("Code") or "Unknown"
        message = error.get("Message", "")
        verdict = classify_aws_error(code)
        if verdict == "fatal":
            raise PermanentError(self._fatal_message(code, message)) from exc
        if verdict == "retry":
            return self._again(entries, [code] * len(entries))
        if len(entries) > 1:
            # A whole-call validation error does not say which entry is at fault. Sent alone,
            # each entry gets its own verdict, so only the bad one is rejected.
            log.warning(
                "PutEvents refused a call of %d entries with %s; sending them one by one",
                len(entries),
                code,
            )
            return _Outcome(rejected=tuple(r for e in entries for r in self._deliver([e])))
        return _Outcome(rejected=(Rejection(entries[0], f"{code}: {message}"),))

    def _again(self, entries: Sequence[BusEntry], codes: Sequence[str]) -> _Outcome:
        """An outcome that sends ``entries`` again, counted under ``codes`` (one per entry)."""
        with self._stats_lock:
            self.stats.entries_retried += len(entries)
            for code in codes:
                self.stats.retries_by_code[code] = self.stats.retries_by_code.get(code, 0) + 1
        return _Outcome(retry=tuple(entries), code=",".join(sorted(set(codes))))

    def _request_entry(self, entry: BusEntry) -> PutEventsRequestEntryTypeDef:
        return {
            "Time": entry.time,
            "Source": entry.source,
            "DetailType": entry.detail_type,
            "Detail": entry.detail,
            "EventBusName": self.event_bus_name,
        }

    def _fatal_message(self, code: str, message: str) -> str:
        return (
            f"EventBridge refused PutEvents with {code}: {message}. Check the AWS credentials, "
            f"that the IAM identity may call events:PutEvents on the event bus "
            f"{self.event_bus_name!r}, and that CDC_EVENT_BUS_NAME names a bus that exists in "
            f"this account and region."
        )

    def _sleep(self, seconds: float) -> None:
        # The wait doubles as the shutdown check: a stop ends it early, and the batch in hand
        # stays unacknowledged, to be read and sent again by the next run.
        if self._stop.wait(seconds):
            raise Interrupted(f"stop requested while retrying PutEvents on {self.event_bus_name}")

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        if state.outcome is None:
            return
        outcome: _Outcome = state.outcome.result()
        log.warning(
            "PutEvents failed with %s for %d entries; attempt %d, retrying in %.3fs",
            outcome.code,
            len(outcome.retry),
            state.attempt_number,
            state.upcoming_sleep,
        )


def check_bus(event_bus_name: str) -> None:
    """Fail start-up on a bus that does not exist: PutEvents to a missing bus is accepted by AWS
    with an EventId (the events are silently lost), so the publisher cannot notice it itself."""
    from botocore.exceptions import NoRegionError

    from cdc.core.errors import ConfigError

    try:
        boto3.client("events").describe_event_bus(Name=event_bus_name)
    except NoRegionError:
        raise ConfigError(
            "AWS_DEFAULT_REGION", "set the AWS region of the bus, e.g. AWS_DEFAULT_REGION=eu-west-1"
        ) from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            raise ConfigError(
                "CDC_EVENT_BUS_NAME",
                f"there is no event bus named {event_bus_name!r} in this account and region; "
                "create it or correct the name",
            ) from None
        # Without events:DescribeEventBus we cannot check; publishing may still be allowed.
        log.warning("could not check that event bus %r exists (%s)", event_bus_name, code)

"""EventBridgePublisher against a scripted fake events client: batching, retries, verdicts."""

from __future__ import annotations

import json
import logging
import random
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from cdc.bus.events import BusEntry
from cdc.bus.publishers.eventbridge import EventBridgePublisher, pack
from cdc.core.errors import (
    Interrupted,
    PermanentError,
    classify_aws_error,
    is_transient_transport_error,
)

BUS = "legacy-changes"
SOURCE = "legacy.db"
DETAIL_TYPE = "row.changed"
WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ENDPOINT = "https://events.eu-west-1.amazonaws.com"

Fault = BaseException | str  # an exception to raise, or "mismatch" for a short Entries list


def client_error(code: str, message: str = "test") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "PutEvents")


def entry(n: int, size: int | None = None) -> BusEntry:
    """Entry number ``n``; its Detail is ``{"n": n, ...}``, padded to ``size`` bytes in all."""
    detail = json.dumps({"n": n})
    if size is not None:
        overhead = len(json.dumps({"n": n, "pad": ""})) + 14 + len(SOURCE) + len(DETAIL_TYPE)
        detail = json.dumps({"n": n, "pad": "x" * (size - overhead)})
    made = BusEntry.create(f"id-{n}", "public.orders", SOURCE, DETAIL_TYPE, WHEN, detail)
    assert size is None or made.size == size
    return made


def number(request_entry: dict[str, Any]) -> int:
    n: int = json.loads(request_entry["Detail"])["n"]
    return n


class FakeEvents:
    """A stand-in for a boto3 events client that records every call and fails on a script.

    ``call_faults`` fails a whole call by its number (0-based); ``entry_faults`` gives the codes
    an entry (by Detail) fails with on its next sends; ``bad_numbers`` makes any call holding
    one of those entries fail whole with ValidationException; ``chaos`` fails calls and entries
    at random; ``on_call`` runs before each call is answered.
    """

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.accepted: Counter[str] = Counter()
        self.call_faults: dict[int, Fault] = {}
        self.entry_faults: dict[str, list[str]] = {}
        self.bad_numbers: set[int] = set()
        self.chaos: tuple[random.Random, float, float] | None = None
        self.on_call: Callable[[int], None] | None = None

    def put_events(self, **request: Any) -> dict[str, Any]:
        entries: list[dict[str, Any]] = [dict(e) for e in request["Entries"]]
        call = len(self.calls)
        self.calls.append(entries)
        if self.on_call is not None:
            self.on_call(call)
        fault = self.call_faults.get(call) or self._random_call_fault()
        if isinstance(fault, BaseException):
            raise fault
        if fault == "mismatch":
            return {"FailedEntryCount": 0, "Entries": []}
        if any(number(e) in self.bad_numbers for e in entries):
            raise client_error("ValidationException", "Detail is not valid")
        results: list[dict[str, str]] = []
        for e in entries:
            code = self._entry_code(e["Detail"])
            if code:
                results.append({"ErrorCode": code, "ErrorMessage": f"{code} in test"})
            else:
                self.accepted[e["Detail"]] += 1
                results.append({"EventId": f"ev-{call}-{len(results)}"})
        failed = sum("ErrorCode" in r for r in results)
        return {"FailedEntryCount": failed, "Entries": results}

    def _entry_code(self, detail: str) -> str | None:
        queued = self.entry_faults.get(detail)
        if queued:
            return queued.pop(0)
        if self.chaos is not None:
            rng, _, entry_rate = self.chaos
            if rng.random() < entry_rate:
                return rng.choice(["ThrottlingException", "InternalFailure"])
        return None

    def _random_call_fault(self) -> Fault | None:
        if self.chaos is None:
            return None
        rng, call_rate, _ = self.chaos
        if rng.random() >= call_rate:
            return None
        return rng.choice(
            [
                client_error("ThrottlingException", "Rate exceeded"),
                client_error("InternalException", "oops"),
                EndpointConnectionError(endpoint_url=ENDPOINT),
                ReadTimeoutError(endpoint_url=ENDPOINT),
                "mismatch",
            ]
        )


def publisher(fake: FakeEvents, **kwargs: Any) -> EventBridgePublisher:
    options: dict[str, Any] = {"initial_backoff": 0.0001, "max_backoff": 0.001} | kwargs
    return EventBridgePublisher(fake, BUS, **options)


def numbers(call: list[dict[str, Any]]) -> list[int]:
    return [number(e) for e in call]


def test_calls_hold_at_most_ten_entries_in_order() -> None:
    fake = FakeEvents()

    assert publisher(fake).publish([entry(n) for n in range(23)]) == []

    assert [numbers(c) for c in fake.calls] == [
        list(range(10)),
        list(range(10, 20)),
        list(range(20, 23)),
    ]


def test_calls_hold_at_most_max_entry_bytes() -> None:
    fake = FakeEvents()

    publisher(fake, max_entry_bytes=1000).publish([entry(n, size=400) for n in range(5)])

    assert [numbers(c) for c in fake.calls] == [[0, 1], [2, 3], [4]]


def test_pack_fills_a_call_up_to_the_byte_limit_exactly() -> None:
    entries = [entry(0, size=300), entry(1, size=700), entry(2, size=100)]

    assert [[e.event_id for e in c] for c in pack(entries, 1000)] == [["id-0", "id-1"], ["id-2"]]


def test_every_request_entry_names_the_bus_and_carries_time() -> None:
    fake = FakeEvents()
    sent = [entry(n) for n in range(3)]

    publisher(fake).publish(sent)

    for request_entry, original in zip(fake.calls[0], sent, strict=True):
        assert request_entry == {
            "Time": WHEN,
            "Source": SOURCE,
            "DetailType": DETAIL_TYPE,
            "Detail": original.detail,
            "EventBusName": BUS,
        }


def test_oversized_entry_is_rejected_and_never_sent() -> None:
    fake = FakeEvents()
    big = entry(1, size=300_123)

    rejections = publisher(fake).publish([entry(0), big, entry(2)])

    assert [r.entry for r in rejections] == [big]
    assert rejections[0].reason == (
        "entry is 300123 bytes, over the maximum of 262144 (CDC_MAX_ENTRY_BYTES)"
    )
    assert [numbers(c) for c in fake.calls] == [[0, 2]]


def test_partial_failure_resends_exactly_the_failed_entries() -> None:
    fake = FakeEvents()
    sent = [entry(n) for n in range(5)]
    fake.entry_faults = {
        sent[1].detail: ["ThrottlingException"],
        sent[3].detail: ["InternalFailure"],
    }
    pub = publisher(fake)

    assert pub.publish(sent) == []

    assert [e["Detail"] for e in fake.calls[1]] == [sent[1].detail, sent[3].detail]
    assert len(fake.calls) == 2
    assert fake.accepted == Counter(e.detail for e in sent)
    assert pub.stats.entries_accepted == 5
    assert pub.stats.entries_retried == 2
    assert pub.stats.retries_by_code == {"ThrottlingException": 1, "InternalFailure": 1}


def test_whole_call_throttling_is_retried_until_accepted(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeEvents()
    fake.call_faults = {n: client_error("ThrottlingException", "Rate exceeded") for n in range(4)}
    pub = publisher(fake)

    with caplog.at_level(logging.WARNING, logger="cdc.publishers.eventbridge"):
        assert pub.publish([entry(0), entry(1)]) == []

    assert len(fake.calls) == 5
    assert all(numbers(c) == [0, 1] for c in fake.calls)
    assert fake.accepted == Counter({entry(0).detail: 1, entry(1).detail: 1})
    assert pub.stats.calls == 5
    assert pub.stats.retries_by_code == {"ThrottlingException": 8}
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 4
    assert "ThrottlingException for 2 entries; attempt 4" in retries[-1].getMessage()


def test_transport_errors_and_mismatched_results_are_retried() -> None:
    fake = FakeEvents()
    fake.call_faults = {
        0: EndpointConnectionError(endpoint_url=ENDPOINT),
        1: ReadTimeoutError(endpoint_url=ENDPOINT),
        2: "mismatch",
    }
    pub = publisher(fake)

    assert pub.publish([entry(0), entry(1)]) == []

    assert [numbers(c) for c in fake.calls] == [[0, 1]] * 4
    assert pub.stats.retries_by_code == {
        "EndpointConnectionError": 2,
        "ReadTimeoutError": 2,
        "EntriesMismatch": 2,
    }


def test_other_exceptions_propagate() -> None:
    fake = FakeEvents()
    fake.call_faults = {0: KeyError("bug")}

    with pytest.raises(KeyError):
        publisher(fake).publish([entry(0)])


def test_random_faults_end_with_every_entry_accepted_exactly_once() -> None:
    # Given 30% of calls and 10% of entries failing with retryable errors, at random
    fake = FakeEvents()
    fake.chaos = (random.Random(20240501), 0.3, 0.1)
    sent = [entry(n) for n in range(500)]
    pub = publisher(fake)

    # When the whole lot is published in batches
    rejections = [r for start in range(0, 500, 37) for r in pub.publish(sent[start : start + 37])]

    # Then the bus saw every entry accepted once, none twice, none lost
    assert rejections == []
    assert fake.accepted == Counter(e.detail for e in sent)
    assert pub.stats.entries_accepted == 500
    assert pub.stats.entries_retried > 0


def test_malformed_detail_is_rejected_with_its_code() -> None:
    fake = FakeEvents()
    sent = [entry(0), entry(1)]
    fake.entry_faults = {sent[1].detail: ["MalformedDetail"]}
    pub = publisher(fake)

    rejections = pub.publish(sent)

    assert [r.entry for r in rejections] == [sent[1]]
    assert rejections[0].reason == "MalformedDetail: MalformedDetail in test"
    assert len(fake.calls) == 1
    assert pub.stats.rejected == 1


def test_whole_call_validation_error_is_split_to_reject_only_the_bad_entry() -> None:
    fake = FakeEvents()
    fake.bad_numbers = {1}
    sent = [entry(0), entry(1), entry(2)]

    rejections = publisher(fake).publish(sent)

    assert [r.entry for r in rejections] == [sent[1]]
    assert rejections[0].reason == "ValidationException: Detail is not valid"
    assert [numbers(c) for c in fake.calls] == [[0, 1, 2], [0], [1], [2]]
    assert fake.accepted == Counter({sent[0].detail: 1, sent[2].detail: 1})


@pytest.mark.parametrize("code", ["AccessDeniedException", "ResourceNotFoundException"])
def test_whole_call_permission_error_is_permanent(code: str) -> None:
    fake = FakeEvents()
    fake.call_faults = {0: client_error(code, "no")}

    with pytest.raises(PermanentError, match="events:PutEvents") as raised:
        publisher(fake).publish([entry(0)])

    assert code in str(raised.value)
    assert BUS in str(raised.value)
    assert len(fake.calls) == 1


def test_entry_not_authorized_for_source_is_permanent() -> None:
    fake = FakeEvents()
    fake.entry_faults = {entry(0).detail: ["NotAuthorizedForSourceException"]}

    with pytest.raises(PermanentError, match="NotAuthorizedForSourceException"):
        publisher(fake).publish([entry(0)])


def test_stop_during_retries_interrupts() -> None:
    fake = FakeEvents()
    fake.call_faults = {n: client_error("ThrottlingException") for n in range(100)}
    stop = threading.Event()

    def stop_at_third_call(call: int) -> None:
        if call == 2:
            stop.set()

    fake.on_call = stop_at_third_call

    with pytest.raises(Interrupted):
        publisher(fake, stop=stop).publish([entry(0)])

    assert len(fake.calls) == 3


def test_unknown_code_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeEvents()
    fake.entry_faults = {entry(0).detail: ["BrandNewException"]}

    with caplog.at_level(logging.WARNING):
        assert publisher(fake).publish([entry(0)]) == []

    assert len(fake.calls) == 2
    assert any("BrandNewException" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        ("ThrottlingException", "retry"),
        ("InternalException", "retry"),
        ("InternalFailure", "retry"),
        ("ServiceUnavailable", "retry"),
        ("TooManyRequestsException", "retry"),
        ("SomethingNew", "retry"),
        ("MalformedDetail", "reject"),
        ("InvalidArgument", "reject"),
        ("ValidationException", "reject"),
        ("AccessDeniedException", "fatal"),
        ("NotAuthorizedForDetailTypeException", "fatal"),
        ("ExpiredTokenException", "fatal"),
        ("ResourceNotFoundException", "fatal"),
    ],
)
def test_classify_aws_error(code: str, verdict: str) -> None:
    assert classify_aws_error(code) == verdict


def test_transient_transport_errors() -> None:
    assert is_transient_transport_error(EndpointConnectionError(endpoint_url=ENDPOINT))
    assert is_transient_transport_error(ConnectionResetError())
    assert not is_transient_transport_error(client_error("ThrottlingException"))
    assert not is_transient_transport_error(ValueError())


def test_from_environment_turns_botocore_retries_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_REGION", raising=False)

    pub = EventBridgePublisher.from_environment(BUS)
    config = pub._client.meta.config  # type: ignore[attr-defined]
    pub.close()

    assert config.retries["total_max_attempts"] == 1
    assert (config.connect_timeout, config.read_timeout) == (5, 30)

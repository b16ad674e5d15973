"""The consumer against a failing queue (a fake SQS): passing failures are retried and counted
by code, failed deletions are tried again and then left to come back, permanent ones stop the
consumer with what to do; and what became of each event is counted for /metrics."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from cdc.bus import sqs as queue_module
from cdc.bus.incoming import Envelope
from cdc.bus.sqs import DELETE_ATTEMPTS, DeleteEntry, backoff
from cdc.core.errors import PermanentError
from sync_back.consumer import event_id_of
from tests.unit.test_sync_back_consumer import FakeSqs, make


def client_error(code: str, operation: str = "ReceiveMessage") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"injected {code}"}}, operation)


class FailingSqs(FakeSqs):
    """Fails the first calls of each kind as scripted, then behaves."""

    def __init__(
        self,
        count: int,
        receive: list[Exception] | None = None,
        delete: list[Exception | dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(count)
        self.receive_failures = list(receive or [])
        self.delete_script = list(delete or [])
        self.delete_calls: list[list[str]] = []

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        if self.receive_failures:
            raise self.receive_failures.pop(0)
        return super().receive_message(**kwargs)

    def delete_message_batch(
        self, *, QueueUrl: str, Entries: Sequence[DeleteEntry]
    ) -> dict[str, Any]:
        self.delete_calls.append([e["Id"] for e in Entries])
        step = self.delete_script.pop(0) if self.delete_script else None
        if isinstance(step, Exception):
            raise step
        failed = set(step.get("failed", [])) if step else set()
        super().delete_message_batch(
            QueueUrl=QueueUrl, Entries=[e for e in Entries if e["Id"] not in failed]
        )
        return {
            "Successful": [{"Id": e["Id"]} for e in Entries if e["Id"] not in failed],
            "Failed": [
                {"Id": i, "SenderFault": False, "Code": "InternalError"} for i in sorted(failed)
            ],
        }


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "backoff", lambda attempt: 0.0)


def handled_all(consumer: Any) -> None:
    def handle_batch(items: list[tuple[str, str]], tick: Any = None) -> list[str]:
        return ["applied"] * len(items)

    consumer.handle_batch = handle_batch


def test_passing_receive_failures_are_retried_and_counted_by_code() -> None:
    sqs = FailingSqs(
        3,
        receive=[
            client_error("RequestThrottled"),
            EndpointConnectionError(endpoint_url="http://sqs"),
        ],
    )
    consumer = make(sqs)
    handled_all(consumer)
    assert consumer.poll_once() == 0 and consumer.poll_once() == 0
    assert consumer.stats.last_polled_at == 0.0  # the queue has not answered yet
    assert consumer.poll_once() == 3
    assert consumer.stats.queue_retries_by_code == {
        "RequestThrottled": 1,
        "EndpointConnectionError": 1,
    }
    assert consumer.stats.last_polled_at > 0 and sqs.deleted == ["r0", "r1", "r2"]


@pytest.mark.parametrize("code", ["AccessDenied", "AWS.SimpleQueueService.NonExistentQueue"])
def test_permanent_queue_errors_stop_the_consumer_with_what_to_do(code: str) -> None:
    consumer = make(FailingSqs(1, receive=[client_error(code)]))
    with pytest.raises(PermanentError, match=code):
        consumer.poll_once()


def test_failed_entries_of_a_delete_are_tried_again() -> None:
    sqs = FailingSqs(
        3, delete=[{"failed": ["1", "2"]}, client_error("InternalError"), {"failed": []}]
    )
    consumer = make(sqs)
    handled_all(consumer)
    assert consumer.poll_once() == 3
    assert sqs.delete_calls == [["0", "1", "2"], ["1", "2"], ["1", "2"]]
    assert sorted(sqs.deleted) == ["r0", "r1", "r2"] and consumer.stats.undeleted == 0
    assert consumer.stats.queue_retries_by_code == {"InternalError": 4}


def test_a_delete_that_keeps_failing_leaves_the_messages_to_come_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sqs = FailingSqs(2, delete=[client_error("ServiceUnavailable")] * DELETE_ATTEMPTS)
    consumer = make(sqs)
    handled_all(consumer)
    with caplog.at_level(logging.WARNING):
        assert consumer.poll_once() == 2
    assert len(sqs.delete_calls) == DELETE_ATTEMPTS and sqs.deleted == []
    assert consumer.stats.undeleted == 2
    assert "skipped as duplicates" in caplog.text


def test_a_failed_visibility_extension_does_not_stop_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sqs = FailingSqs(4)

    def refuse(**_: Any) -> None:
        raise client_error("RequestThrottled", "ChangeMessageVisibilityBatch")

    sqs.change_message_visibility_batch = refuse  # type: ignore[assignment,method-assign]
    consumer = make(sqs)
    clock = iter(range(0, 1000, 3))
    monkeypatch.setattr(queue_module.time, "monotonic", lambda: next(clock))
    consumer._prepare = lambda body, message_id: "own_event"  # type: ignore[method-assign]
    assert consumer.poll_once() == 4
    assert consumer.stats.queue_retries_by_code["RequestThrottled"] >= 1
    assert sqs.deleted == ["r0", "r1", "r2", "r3"]


def test_outcomes_are_counted_for_metrics() -> None:
    consumer = make(FakeSqs(0))
    for outcome in (
        "applied",
        "applied",
        "duplicate",
        "skip_stale",
        "skip_conflict",
        "parked",
        "dead_letter",
    ):
        consumer._count(outcome)
    stats = consumer.stats
    assert (stats.applied, stats.duplicates, stats.stale, stats.conflicts, stats.parked) == (
        2,
        1,
        1,
        2,
        1,
    )
    assert stats.skipped == 2 and stats.dead_letters == 0  # dead letters: counted when stored


def test_a_dead_letter_log_line_names_the_event_id_and_table(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = make(FakeSqs(0))
    consumer._with_retry = lambda action: None  # type: ignore[assignment,method-assign]
    with caplog.at_level(logging.WARNING):
        consumer._dead_letter("m1", "OrderPlaced", "bad total", "{}", "e-42", "public.orders")
        consumer._dead_letter("m2", None, "body is not JSON", "{")
    first, second = caplog.messages
    assert "e-42" in first and "public.orders" in first and "m1" in first
    assert "unknown" in second and "m2" in second


def test_backoff_grows_with_full_jitter() -> None:
    assert all(0 <= backoff(1) <= 0.4 for _ in range(100))
    assert all(0 <= backoff(20) <= 10 for _ in range(100))


def test_the_logged_event_id_is_the_one_the_inbox_would_claim() -> None:
    def envelope(detail: dict[str, Any]) -> Envelope:
        return Envelope("envelope-1", "shop.orders", "OrderPlaced", None, detail, "{}")

    assert event_id_of(envelope({"id": "d-1"}), ("id",)) == "d-1"
    assert event_id_of(envelope({"meta": {"id": "d-2"}}), ("meta", "id")) == "d-2"
    assert event_id_of(envelope({"id": "d-1"}), ()) == "envelope-1"  # id_path = ""
    assert event_id_of(envelope({"id": 7}), ("id",)) == "envelope-1"

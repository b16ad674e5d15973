"""Health and metrics of the validator (the server is ``cdc.core.health``): its counters, read
when scraped, and the claims in doubt, counted in the database at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cdc.core.health import serve_endpoints
from cdc.validate import state
from cdc.validate.validator import Validator

log = logging.getLogger(__name__)


class ValidatorCollector(Collector):
    def __init__(self, validator: Validator) -> None:
        self.validator = validator

    def collect(self) -> Iterator[Any]:
        stats = self.validator.stats
        for name, help_text, value in (
            ("cdc_validator_messages_received", "SQS messages received", stats.received),
            (
                "cdc_validator_republished",
                "valid events the central bus accepted as valid.<source>",
                stats.republished,
            ),
            (
                "cdc_validator_duplicates",
                "events already republished (redelivered, or twice in a batch), not sent again",
                stats.duplicates,
            ),
            (
                "cdc_validator_in_doubt_skipped",
                "events not sent because an earlier claim of them is in doubt",
                stats.in_doubt,
            ),
            (
                "cdc_validator_dead_letters",
                "messages that are not an event, have no schema or are invalid (dead letters)",
                stats.dead_letters,
            ),
            (
                "cdc_validator_rejected",
                "valid events the central bus refused (dead letters too)",
                stats.rejected,
            ),
            (
                "cdc_validator_already_valid",
                "events whose source is already valid.*, left alone",
                stats.already_valid,
            ),
            (
                "cdc_validator_undeleted",
                "handled messages left to come back from the queue",
                stats.undeleted,
            ),
            ("cdc_validator_database_retries", "database operations retried", stats.db_retries),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], value)
            yield counter
        retries = CounterMetricFamily(
            "cdc_validator_queue_retries",
            "SQS calls (or batch entries) that failed and were tried again, by error code",
            labels=["code"],
        )
        for code, count in sorted(stats.queue_retries_by_code.items()):
            retries.add_metric([code], count)
        yield retries
        last = GaugeMetricFamily(
            "cdc_validator_last_poll_timestamp_seconds",
            "when the validator last received from its queue",
        )
        last.add_metric([], stats.last_polled_at)
        yield last
        yield from self._in_doubt()

    def _in_doubt(self) -> Iterator[Any]:
        """What ``cdc validate --in-doubt`` lists, counted at scrape time (skipped, with a debug
        line, when the database does not answer: /readyz tells that story)."""
        validator = self.validator
        # A younger claim may still be in a running validator's hands.
        settled_after = timedelta(seconds=validator.settings.validate_visibility_timeout)
        try:
            count = state.count_in_doubt(validator.engine, validator.tables, settled_after)
        except Exception as exc:
            log.debug("in-doubt claims metric skipped: %s", exc)
            return
        claims = GaugeMetricFamily(
            "cdc_validator_in_doubt_claims",
            "claims whose PutEvents verdict was never recorded (cdc validate --in-doubt)",
        )
        claims.add_metric([], count)
        yield claims


def serve_validator(
    validator: Validator, port: int, ready_within: float = 30.0
) -> ThreadingHTTPServer:
    """Start the validator's endpoints. It is ready while its queue answers: a long poll waits
    at most 20 seconds, and a validator stuck on an unavailable database stops polling, so it
    turns not ready too."""
    return serve_endpoints(
        ValidatorCollector(validator),
        lambda: validator.stats.last_polled_at,
        port,
        ready_within,
    )

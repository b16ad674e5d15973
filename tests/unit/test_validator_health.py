"""The validator's /metrics collector: counters from its stats, and the claims in doubt counted
at scrape time (skipped when the database does not answer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, create_engine

from cdc.bus.publishers.file import NullPublisher
from cdc.core.dialects import SQLITE
from cdc.core.settings import load_settings
from cdc.core.state import state_tables
from cdc.validate.health import ValidatorCollector
from cdc.validate.registry import SchemaRegistry
from cdc.validate.state import CLAIMED, PUBLISHED
from cdc.validate.validator import Validator

SETTINGS = load_settings(
    {"CDC_DATABASE_URL": "sqlite://", "CDC_TABLES": "t", "CDC_VALIDATE_QUEUE_URL": "q"}
)
TABLES = state_tables(SQLITE)


def validator(engine: Engine) -> Validator:
    return Validator(SETTINGS, engine, TABLES, SchemaRegistry({}), NullPublisher(), None)


def samples(v: Validator) -> dict[str, Any]:
    return {
        sample.name: (sample.labels, sample.value)
        for family in ValidatorCollector(v).collect()
        for sample in family.samples
    }


def test_counters_and_the_claims_in_doubt_older_than_the_visibility_timeout() -> None:
    engine = create_engine("sqlite://")
    TABLES.metadata.create_all(engine)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            TABLES.republished.insert(),
            [
                {
                    "source": "s",
                    "event_id": event_id,
                    "detail_type": "T",
                    "status": status,
                    "claim": "token",
                    "claimed_at": (now - age).isoformat(),
                }
                for event_id, status, age in (
                    ("in-doubt", CLAIMED, timedelta(minutes=5)),
                    ("in-hand", CLAIMED, timedelta(seconds=1)),  # a running validator's, maybe
                    ("settled", PUBLISHED, timedelta(minutes=5)),
                )
            ],
        )
    v = validator(engine)
    v.stats.received, v.stats.republished, v.stats.in_doubt = 7, 5, 1
    v.stats.queue_retries_by_code["RequestThrottled"] = 2
    found = samples(v)
    assert found["cdc_validator_in_doubt_claims"] == ({}, 1)
    assert found["cdc_validator_messages_received_total"] == ({}, 7)
    assert found["cdc_validator_republished_total"] == ({}, 5)
    assert found["cdc_validator_in_doubt_skipped_total"] == ({}, 1)
    assert found["cdc_validator_queue_retries_total"] == ({"code": "RequestThrottled"}, 2)


def test_the_claims_in_doubt_are_left_out_when_the_database_does_not_answer() -> None:
    found = samples(validator(create_engine("sqlite://")))  # no tables: every query fails
    assert "cdc_validator_in_doubt_claims" not in found
    assert found["cdc_validator_messages_received_total"] == ({}, 0)

"""A running validator's /healthz, /readyz and /metrics: its counters move as messages are
judged, and the claims in doubt are counted in the database at each scrape."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy.engine import URL

from cdc.core.dialects import POSTGRESQL
from cdc.core.state import state_tables
from cdc.validate import state as validation_state
from cdc.validate.validator import resend_in_doubt
from tests.conftest import free_port
from tests.integration.test_health import get, metric
from tests.integration.test_validation import SOURCE, Crash, crash_at, setup, validator

pytestmark = pytest.mark.integration


def body(detail: dict[str, Any], source: str = SOURCE) -> str:
    return json.dumps(
        {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "OrderPlaced",
            "source": source,
            "time": "2026-11-28T12:00:00Z",
            "detail": detail,
        }
    )


def test_metrics_and_readiness_of_a_running_validator(
    pg_url: URL, moto_endpoint: str, tmp_path: Path
) -> None:
    settings, engine, applied, _archive = setup(pg_url, tmp_path)
    settings.schemas_dir.mkdir()
    (settings.schemas_dir / "OrderPlaced.json").write_text(
        json.dumps(
            {
                "type": "object",
                "required": ["id", "total"],
                "properties": {"id": {"type": "string"}, "total": {"type": "string"}},
            }
        )
    )
    sqs = boto3.client("sqs")
    queue = applied.validation_queue_url
    # Given: a validator that died after claiming an event, before sending it: a claim in doubt
    sqs.send_message(QueueUrl=queue, MessageBody=body({"id": "o-1", "total": "1.00"}))
    crashed = validator(settings, engine, crash_at("claimed"))
    with pytest.raises(Crash):
        crashed.poll_once()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(
        {
            "CDC_DATABASE_URL": settings.url.render_as_string(hide_password=False),
            "CDC_CENTRAL_BUS_NAME": settings.central_bus_name,
            "CDC_VALIDATE_QUEUE_URL": queue or "",
            "CDC_SCHEMAS_DIR": str(settings.schemas_dir),
            "CDC_VALIDATE_WAIT_SECONDS": "1",
            "CDC_VALIDATE_VISIBILITY_TIMEOUT": "1",
            "CDC_HEALTH_PORT": str(port),
            "CDC_LOG_LEVEL": "ERROR",
        }
    )
    process = subprocess.Popen([sys.executable, "-m", "cdc", "validate"], env=env)
    base = f"http://127.0.0.1:{port}"

    def scrape() -> str:
        status, text = get(f"{base}/metrics")
        assert status == 200
        return text

    def wait_for(name: str, value: float) -> str:
        deadline = time.monotonic() + 20
        while metric(text := scrape(), name) != value:
            assert time.monotonic() < deadline, f"{name} is {metric(text, name)}, not {value}"
            time.sleep(0.1)
        return text

    try:
        # ... which now answers, reaches its queue, and counts the claim in doubt
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = get(f"{base}/healthz")
                break
            except OSError:
                assert process.poll() is None, "the validator exited"
                assert time.monotonic() < deadline, "the health endpoint never answered"
                time.sleep(0.1)
        assert status == 200
        deadline = time.monotonic() + 10
        while get(f"{base}/readyz")[0] != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        wait_for("cdc_validator_in_doubt_claims", 1)
        # ... and skips the crashed batch's message when it comes back: its event is in doubt
        wait_for("cdc_validator_in_doubt_skipped_total", 1)

        # When: a valid event comes twice, an invalid one, and one already validated
        for message in (
            body({"id": "o-2", "total": "2.00"}),
            body({"id": "o-2", "total": "2.00"}),
            body({"id": "o-3", "total": 3}),
            body({"id": "o-4", "total": "4.00"}, source="valid." + SOURCE),
        ):
            sqs.send_message(QueueUrl=queue, MessageBody=message)

        # Then: each outcome is counted
        for name in (
            "cdc_validator_republished_total",
            "cdc_validator_duplicates_total",
            "cdc_validator_dead_letters_total",
            "cdc_validator_already_valid_total",
        ):
            text = wait_for(name, 1)
        assert metric(text, "cdc_validator_rejected_total") == 0
        assert metric(text, "cdc_validator_in_doubt_claims") == 1
        # ... every message received once, but the one in doubt, skipped again each time it
        # comes back (on a busy machine its 1 s visibility timeout may pass before its delete)
        deadline = time.monotonic() + 10
        while (
            metric(text := scrape(), "cdc_validator_messages_received_total")
            - metric(text, "cdc_validator_in_doubt_skipped_total")
            != 4
        ):
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
        assert 0 < time.time() - metric(text, "cdc_validator_last_poll_timestamp_seconds") < 30
        assert get(f"{base}/readyz")[0] == 200

        # When: an operator resends the event in doubt; Then: the gauge reads 0 at once
        tables = state_tables(POSTGRESQL, settings.state_schema)
        claims = validation_state.in_doubt(engine, tables)
        assert resend_in_doubt(engine, tables, crashed.publisher, claims) == (1, [])
        assert metric(scrape(), "cdc_validator_in_doubt_claims") == 0
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0

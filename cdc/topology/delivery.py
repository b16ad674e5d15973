"""What every rule target gets, in the template and through apply alike, so a stack and an
applied account deliver the same way: EventBridge's retry policy, the dead-letter queue's
settings, and the IAM documents of the role EventBridge assumes to put events on a bus."""

from __future__ import annotations

from typing import Any

from cdc.core.limits import (
    SQS_MAX_RETENTION_SECONDS,
    TARGET_MAX_EVENT_AGE_SECONDS,
    TARGET_MAX_RETRY_ATTEMPTS,
)

# EventBridge retries a target for as long as it allows before the DLQ, and the DLQ keeps a
# dead letter for as long as SQS allows.
RETRY_POLICY = {
    "MaximumEventAgeInSeconds": TARGET_MAX_EVENT_AGE_SECONDS,
    "MaximumRetryAttempts": TARGET_MAX_RETRY_ATTEMPTS,
}
DLQ_RETENTION_SECONDS = SQS_MAX_RETENTION_SECONDS
MAX_RECEIVE_COUNT = 5
VISIBILITY_TIMEOUT_SECONDS = 60


def events_trust_policy() -> dict[str, Any]:
    """The role's trust policy: only EventBridge may assume it."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def put_events_policy(bus_arn: Any) -> dict[str, Any]:
    """The role's one permission: PutEvents on the target bus (an ARN, or a template's
    ``Fn::Sub`` of one)."""
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "events:PutEvents", "Resource": bus_arn}],
    }

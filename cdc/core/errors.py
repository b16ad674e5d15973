"""Errors, classified in one place: what is retried, what stops the process, what to tell."""

from __future__ import annotations

import logging
from typing import Literal

import botocore.exceptions
import urllib3.exceptions


class CdcError(Exception):
    """Base of the errors this service raises on purpose."""


class ConfigError(CdcError):
    """A setting is wrong or missing; the message names it and what to write."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class SetupError(CdcError):
    """The legacy database is not ready for capture (no primary key, missing table, ...)."""


class PermanentError(CdcError):
    """Retrying cannot help (bad credentials, access denied); the operator must act."""


class Interrupted(CdcError):
    """A stop was requested while waiting to retry; the batch in hand is not acknowledged."""


# --- AWS errors -------------------------------------------------------------------------------
# One verdict per AWS error code, for a whole call (a ClientError's code) and for one PutEvents
# entry (its ErrorCode) alike: "retry" waits and sends again, "reject" hands the entry back as
# one the bus can never accept, "fatal" stops the process until the operator acts.

AwsVerdict = Literal["retry", "reject", "fatal"]

# Throttles and server-side faults: the same request succeeds later. PutEvents documents
# ThrottlingException and InternalFailure as its retryable entry codes and InternalException as
# its only call error; the rest are the common AWS codes botocore's own retryer treats as
# throttles or transient faults.
RETRYABLE_AWS_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "PriorRequestNotComplete",
        "InternalException",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)

# The entry itself is wrong: sent again it fails again, and it must not block the others.
REJECTED_AWS_CODES = frozenset(
    {
        "MalformedDetail",
        "InvalidArgument",
        "ValidationException",
        "ValidationError",
        "InvalidEventPatternException",
        # PutEvents lists it as non-retryable: the event's CloudTrail redaction failed.
        "RedactionFailure",
    }
)

# Credentials, permissions or the bus itself: every entry would fail the same way, so rejecting
# them one by one would throw the whole stream away. The operator must act.
FATAL_AWS_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "NotAuthorized",
        "NotAuthorizedForSourceException",
        "NotAuthorizedForDetailTypeException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "MissingAuthenticationToken",
        "InvalidSignatureException",
        "IncompleteSignature",
        "ExpiredTokenException",
        "OptInRequired",
        "ResourceNotFoundException",
        # PutEvents lists it per entry: the account in the bus ARN is not valid.
        "InvalidAccountIdException",
    }
)

# botocore's own standard retryer counts its ConnectionError and HTTPClientError families as
# transient; these are the members an events call meets, plus what urllib3 or the socket layer
# lets through unwrapped (a connection reset while reading the body, say).
_TRANSIENT_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def classify_aws_error(code: str) -> AwsVerdict:
    """What to do about an AWS error code; a code nobody foresaw is retried, never dropped."""
    if code in FATAL_AWS_CODES:
        return "fatal"
    if code in REJECTED_AWS_CODES:
        return "reject"
    if code not in RETRYABLE_AWS_CODES:
        # Retrying an unknown code may stall the stream, but rejecting it could lose events.
        logging.getLogger(__name__).warning(
            "unknown AWS error code %r; retrying it like a throttle", code
        )
    return "retry"


def is_transient_transport_error(exc: BaseException) -> bool:
    """True for network failures (no connection, reset, timeout) that a later call may not meet."""
    return isinstance(exc, _TRANSIENT_TRANSPORT_ERRORS)

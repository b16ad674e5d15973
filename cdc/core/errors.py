"""Errors, classified in one place: what is retried, what stops the process, what to tell.

The verdicts come from here: whether an AWS error code is retried, rejected or fatal
(``classify_aws_error``), whether a network failure may pass (``is_transient_transport_error``),
and what a database error is (``classify_db_error``: its kind, and whether a new connection may
cure it). ``cdc.core.exits`` words them for the operator.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
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


# --- database errors --------------------------------------------------------------------------
# One kind per driver message (psycopg/libpq and sqlite3 texts, lower-cased; the first pattern
# that matches wins). The kind decides whether a new connection may cure it, and what to tell.

DbKind = Literal[
    "disconnected",
    "auth",
    "unknown_role",
    "no_database",
    "not_allowed",
    "privilege",
    "not_postgres",
    "tls",
    "refused",
    "timeout",
    "unknown_host",
    "database_file",
    "missing",
    "other",
]

_DB_PATTERNS: tuple[tuple[str, DbKind], ...] = (
    # The server ended the session (restart, pg_terminate_backend) or the network did.
    (
        r"terminating connection|server closed the connection|ssl syscall error"
        r"|ssl connection has been closed|connection reset|consuming input failed",
        "disconnected",
    ),
    (
        r"password authentication failed|no password supplied|is not permitted to log in"
        r"|authentication failed",
        "auth",
    ),
    (r'role ".*" does not exist', "unknown_role"),
    (r'database ".*" does not exist', "no_database"),
    (r"no pg_hba\.conf entry", "not_allowed"),
    (r"permission denied|must be owner of|must be superuser", "privilege"),
    # libpq asks for TLS first (sslmode=prefer): an HTTP server answers 'H'.
    (r"invalid response to ssl negotiation|expected authentication request", "not_postgres"),
    (r"ssl|certificate", "tls"),
    (r"connection refused", "refused"),
    (r"timeout expired|timed out", "timeout"),
    (
        r"failed to resolve host|could not translate host name|name or service not known"
        r"|nodename nor servname|temporary failure in name resolution",
        "unknown_host",
    ),
    (r"unable to open database file", "database_file"),
    # START_REPLICATION on a slot of another database: it is missing from this one, for good.
    (r"does not exist|no such table|was not created in this database", "missing"),
)
_DB_MESSAGES = [(re.compile(pattern), kind) for pattern, kind in _DB_PATTERNS]

# Kinds a later connection may not meet: a restart, a network or DNS hiccup, a server coming up.
# Credentials, a missing role or database, pg_hba.conf and privileges wait for the operator.
_PASSING_KINDS: frozenset[DbKind] = frozenset(
    {
        "disconnected",
        "not_postgres",
        "tls",
        "refused",
        "timeout",
        "unknown_host",
        "database_file",
        "other",
    }
)


@dataclass(frozen=True, slots=True)
class DbFailure:
    kind: DbKind
    transient: bool  # retried around database I/O (``db_retrying``)
    text: str  # the driver's message


def classify_db_error(exc: BaseException) -> DbFailure | None:
    """What a database error means; None for an exception that is not one."""
    import psycopg
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError):
        text = str(exc.orig if exc.orig is not None else exc)
        invalidated = exc.connection_invalidated
        # Only these say the connection failed; a statement's own error is not retried.
        io = isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    elif isinstance(exc, psycopg.Error):  # the replication stream uses psycopg directly
        text, invalidated = str(exc), False
        io = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    else:
        return None
    lowered = text.lower()
    kinds = (kind for pattern, kind in _DB_MESSAGES if pattern.search(lowered))
    kind: DbKind = next(kinds, "other")
    return DbFailure(kind, invalidated or (io and kind in _PASSING_KINDS), text)


def is_transient_db_error(exc: BaseException) -> bool:
    """A failure that a new connection may cure: the server restarted, the connection was
    terminated or timed out. Wrong credentials or a missing database are not retried."""
    failure = classify_db_error(exc)
    return failure is not None and failure.transient

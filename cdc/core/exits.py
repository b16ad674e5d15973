"""How a command ends on a failure it expected: one or two lines naming the setting and the fix,
exit status 2 for a wrong setting and 1 for the environment (a server down, a privilege
missing), never the password; the traceback only when asked for (``--debug``, or
``CDC_LOG_LEVEL=DEBUG``). Every entry point (``cdc``, ``sync-back``) ends through ``report``;
the kinds of failure come from ``cdc.core.errors``."""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import botocore.exceptions

from cdc.core.dialects import dialect_of
from cdc.core.errors import (
    RETRYABLE_AWS_CODES,
    CdcError,
    ConfigError,
    DbKind,
    classify_db_error,
    is_transient_transport_error,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

DEBUG_HELP = "log at DEBUG, and show a failure's traceback (as CDC_LOG_LEVEL=DEBUG does)"
CONFIGURATION = 2  # exit status: a setting is wrong; the message names it
ENVIRONMENT = 1  # exit status: a server, the network or a privilege is not as it should be

# Per kind: the exit status and the message, formatted with the URL's parts and the driver's
# reason. Kinds not listed (a missing table, a statement's own error) are not expected at a
# command's start: they keep their traceback.
_DB_ADVICE: dict[DbKind, tuple[int, str]] = {
    "refused": (
        ENVIRONMENT,
        "CDC_DATABASE_URL: nothing accepts connections at {where}; check the host and port in "
        "the URL, and that PostgreSQL runs there and listens on TCP",
    ),
    "timeout": (
        ENVIRONMENT,
        "CDC_DATABASE_URL: {where} did not answer in time; check the host in the URL, and that "
        "no firewall drops the connection",
    ),
    "unknown_host": (
        CONFIGURATION,
        "CDC_DATABASE_URL: the host name {host!r} does not resolve; correct the host in the URL",
    ),
    "not_postgres": (
        CONFIGURATION,
        "CDC_DATABASE_URL: what answers at {where} is not PostgreSQL; correct the host and port "
        "in the URL",
    ),
    "disconnected": (
        ENVIRONMENT,
        "CDC_DATABASE_URL: {where} closed the connection ({reason}); check that the URL names a "
        "PostgreSQL server and that it is up",
    ),
    "tls": (
        CONFIGURATION,
        "CDC_DATABASE_URL: TLS with {where} failed ({reason}); set sslmode in the URL to what "
        "the server offers (?sslmode=require with TLS, ?sslmode=disable without)",
    ),
    "auth": (
        CONFIGURATION,
        "CDC_DATABASE_URL: {where} refused the login of role {user!r} ({reason}); correct the "
        "user name and password in the URL",
    ),
    "unknown_role": (
        CONFIGURATION,
        "CDC_DATABASE_URL: there is no role {user!r} on {where}; correct the user name in the "
        "URL, or create the role",
    ),
    "no_database": (
        CONFIGURATION,
        "CDC_DATABASE_URL: there is no database {database!r} on {where}; correct the database "
        "name in the URL",
    ),
    "not_allowed": (
        ENVIRONMENT,
        "CDC_DATABASE_URL: {where} admits no connection of role {user!r} to database "
        "{database!r} from this host ({reason}); ask its DBA for a pg_hba.conf entry, or add "
        "?sslmode=require if it admits TLS connections only",
    ),
    "privilege": (
        ENVIRONMENT,
        "CDC_DATABASE_URL: role {user!r} lacks a privilege ({reason}); run `cdc migrate` and "
        "`cdc setup` as the owner of the legacy tables, the rest as the roles that "
        "`cdc grants` and `sync-back grants` print",
    ),
    "database_file": (
        CONFIGURATION,
        "CDC_DATABASE_URL: cannot open the SQLite file {database!r}; check the path and that its "
        "folder exists",
    ),
    "other": (ENVIRONMENT, "CDC_DATABASE_URL: the database at {where} failed: {reason}"),
}

# AWS codes that say the credentials themselves are wrong (not what they may do).
_CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ExpiredToken",
        "ExpiredTokenException",
    }
)
_AWS_CREDENTIALS_FIX = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an IAM role"
)


@dataclass(frozen=True, slots=True)
class Explained:
    """What an entry point prints for a failure it expected, and its exit status."""

    message: str
    status: int


def explain(exc: BaseException, url: URL | None = None) -> Explained | None:
    """The operator's message for an expected failure, None for one nobody foresaw (a bug,
    whose traceback is what the operator needs). ``url`` is the database the command used."""
    explained: Explained | None
    if isinstance(exc, ConfigError):
        explained = Explained(f"configuration error: {exc}", CONFIGURATION)
    elif isinstance(exc, CdcError):
        explained = Explained(str(exc), ENVIRONMENT)
    elif isinstance(exc, OSError) and exc.filename is not None:
        # A file the command reads or writes (an -o file, the bus file, the schemas folder).
        explained = Explained(f"{exc.filename}: {exc.strerror or exc}", ENVIRONMENT)
    else:
        explained = _explain_database(exc, url) or _explain_aws(exc)
    if explained is not None and url is not None and url.password:
        # The driver's reason is quoted as it is; no message may carry the password.
        explained = Explained(explained.message.replace(url.password, "***"), explained.status)
    return explained


def _explain_database(exc: BaseException, url: URL | None) -> Explained | None:
    failure = classify_db_error(exc)
    if failure is None or failure.kind not in _DB_ADVICE:
        return None
    # The driver calls some statement errors operational (sqlite3, a syntax error).
    ambiguous = url is not None and dialect_of(url).operational_statement_errors
    if failure.kind == "other" and (ambiguous or not failure.transient):
        # A statement's own error: a bug, or the state schema changed by hand. Its traceback
        # tells more.
        return None
    status, template = _DB_ADVICE[failure.kind]
    message = template.format(
        where=dialect_of(url).location(url) if url is not None else "localhost:5432",
        host=(url.host if url else None) or "localhost",
        user=(url.username if url else None) or "?",
        database=(url.database if url else None) or "?",
        reason=_reason(failure.text),
    )
    return Explained(message, status)


def _reason(text: str) -> str:
    """The driver's own words, on one line: the server's last message after libpq's preamble."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), text)
    line = line.rsplit(" failed: ", 1)[-1]
    line = re.sub(r"^(FATAL|ERROR):\s+", "", line)
    return line if len(line) <= 200 else line[:197] + "..."


def _explain_aws(exc: BaseException) -> Explained | None:
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return Explained(f"AWS credentials: none found; {_AWS_CREDENTIALS_FIX}", CONFIGURATION)
    if isinstance(exc, botocore.exceptions.PartialCredentialsError):
        return Explained(f"AWS credentials: {exc}; {_AWS_CREDENTIALS_FIX}", CONFIGURATION)
    if isinstance(exc, botocore.exceptions.NoRegionError):
        return Explained(
            "AWS_DEFAULT_REGION: set the AWS region, e.g. AWS_DEFAULT_REGION=eu-west-1",
            CONFIGURATION,
        )
    if isinstance(exc, botocore.exceptions.ProfileNotFound):
        return Explained(f"AWS_PROFILE: {exc}; correct it or unset it", CONFIGURATION)
    if is_transient_transport_error(exc):
        endpoint = getattr(exc, "kwargs", {}).get("endpoint_url") or "its endpoint"
        return Explained(
            f"cannot reach AWS at {endpoint} ({type(exc).__name__}); check AWS_ENDPOINT_URL "
            "(unset, boto3 uses AWS's endpoint in AWS_DEFAULT_REGION) and the network",
            ENVIRONMENT,
        )
    if not isinstance(exc, botocore.exceptions.ClientError):
        return None
    error = exc.response.get("Error", {})
    code, text = error.get("Code") or "Unknown", error.get("Message", "")
    call = exc.operation_name
    if code in _CREDENTIAL_CODES:
        return Explained(
            f"AWS credentials: {call} refused them ({code}: {text}); {_AWS_CREDENTIALS_FIX}",
            CONFIGURATION,
        )
    if code in RETRYABLE_AWS_CODES:
        return Explained(
            f"AWS answered {call} with {code} after boto3's retries; run the command again in a "
            "minute (AWS_MAX_ATTEMPTS raises boto3's retries; a quota increase ends throttling)",
            ENVIRONMENT,
        )
    return Explained(f"AWS refused {call} ({code}: {text})", ENVIRONMENT)


def debug_flag(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """Whether ``--debug`` is among the arguments, and the arguments without it: it is taken
    wherever it stands (``cdc status --debug`` as well as ``cdc --debug status``)."""
    return "--debug" in argv, [arg for arg in argv if arg != "--debug"]


def report(program: str, exc: BaseException, url: URL | None, debug: bool) -> int | None:
    """Print an expected failure for the operator (after its traceback when ``debug``) and
    return the exit status; None when the failure was not expected (the caller re-raises)."""
    explained = explain(exc, url)
    if explained is None:
        return None
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"{program}: {explained.message}", file=sys.stderr)
    return explained.status

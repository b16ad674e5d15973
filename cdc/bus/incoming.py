"""Incoming messages: an SQS body carrying an EventBridge envelope, checked and parsed.

The first pure step of sync back. Everything a body can get wrong (not JSON, too large, too
deep, a missing or mistyped envelope field) raises ``Invalid`` with a reason that names the
part, so the consumer can dead-letter the message with that reason and its raw body and carry
on. Numbers are parsed as ``Decimal`` (a numeric keeps every digit); NaN and Infinity, which
JSON does not have, and duplicate keys in one object, which make a body mean two things, are
refused.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from cdc.core.errors import CdcError
from cdc.core.limits import DEFAULT_BODY_BYTES

# The validator republishes a valid event under its source with this in front.
VALID_PREFIX = "valid."
# The EventBridge envelope keys we read; others ("version", "account", "region", "resources",
# and any AWS adds later) are accepted and ignored.
_ENVELOPE_STRINGS = ("id", "detail-type", "source")


def comes_from(source: str, original: str) -> bool:
    """Whether an event of ``source`` was published under ``original``: directly, or
    republished by the validator (``valid.`` in front, as many times as it went through one)."""
    while source != original:
        if not source.startswith(VALID_PREFIX):
            return False
        source = source[len(VALID_PREFIX) :]
    return True


class Invalid(CdcError):
    """A message that can never be applied; ``reason`` names what is wrong and where."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Envelope:
    """An EventBridge event as it arrived; ``body`` is the raw SQS body, for dead letters."""

    envelope_id: str
    source: str
    detail_type: str
    time: datetime | None
    detail: dict[str, Any]
    body: str


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


# One decoder, reused (json.loads builds a new one per call when given hooks).
_DECODER = json.JSONDecoder(
    parse_float=Decimal, parse_constant=_constant, object_pairs_hook=_object
)


def text_problem(value: str) -> str | None:
    """Why PostgreSQL would refuse this string as text, or None.

    PostgreSQL text cannot hold NUL, and an unpaired surrogate (which JSON's ``\\ud800``
    escape can produce) cannot be encoded as UTF-8 for the wire. Refusing them here makes them
    a dead letter with a reason rather than a database error that might be retried.
    """
    if "\x00" in value:
        return "contains a NUL character"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains an unpaired surrogate (not valid Unicode)"
    return None


def describe(value: Any, limit: int = 60) -> str:
    """A short rendering of a JSON value for a reason; long values are cut."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_message(body: str, max_bytes: int = DEFAULT_BODY_BYTES) -> Envelope:
    """The envelope of one SQS message body; raises ``Invalid`` naming what is wrong."""
    size = len(body.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise Invalid(f"body is {size} bytes, over {max_bytes}")
    if not body.strip():
        raise Invalid("body is empty")
    try:
        document = _DECODER.decode(body)
    except _DuplicateKey as exc:
        raise Invalid(f"body has the key {exc.key!r} twice in one object") from None
    except RecursionError:
        raise Invalid("body is not JSON this service can read: nested too deeply") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            # Python refuses to parse longer integers (a denial-of-service guard).
            raise Invalid(
                "body is not JSON this service can read: an integer has more than "
                f"{sys.get_int_max_str_digits()} digits"
            ) from None
        raise Invalid(f"body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise Invalid(f"body is {_kind(document)}, not a JSON object (an EventBridge envelope)")
    strings: dict[str, str] = {}
    for name in _ENVELOPE_STRINGS:
        if name not in document:
            raise Invalid(f"missing {name!r}")
        value = document[name]
        if not isinstance(value, str) or not value:
            raise Invalid(f"{name!r} is not a non-empty string (got {describe(value)})")
        problem = text_problem(value)
        if problem:
            raise Invalid(f"{name!r} {problem}")
        strings[name] = value
    if "detail" not in document:
        raise Invalid("missing 'detail'")
    detail = document["detail"]
    if not isinstance(detail, dict):
        raise Invalid(f"'detail' is not an object (got {_kind(detail)})")
    return Envelope(
        envelope_id=strings["id"],
        source=strings["source"],
        detail_type=strings["detail-type"],
        time=_time(document.get("time")),
        detail=detail,
        body=body,
    )


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Invalid(f"'time' is not a string (got {describe(value)})")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(f"'time' is not an ISO 8601 time (got {describe(value)})") from None
    if moment.tzinfo is None:
        raise Invalid(f"'time' has no time zone (got {describe(value)})")
    return moment


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"

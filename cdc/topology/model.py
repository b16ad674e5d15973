"""The topology as data, read from ``[topology]`` in the TOML file: the producers, the central
bus and its validation queue, the consumers; and the event pattern of each rule between them.
The template and apply both build from these, so they match the same events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cdc.bus.incoming import VALID_PREFIX
from cdc.core.errors import ConfigError
from cdc.core.limits import SQS_QUEUE_NAME_MAX_LENGTH
from cdc.core.settings import Settings

ACCOUNT_PATTERN = r"^\d{12}$"
REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-\d$"
# The validation queue's dead-letter queue is named after it with "-dlq": both fit SQS's limit.
QUEUE_NAME_PATTERN = rf"^[A-Za-z0-9_-]{{1,{SQS_QUEUE_NAME_MAX_LENGTH - len('-dlq')}}}$"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9-]{0,39}$")
    account: str | None = Field(None, pattern=ACCOUNT_PATTERN)
    region: str | None = Field(None, pattern=REGION_PATTERN)
    detail_types: tuple[str, ...] = ()
    # An EventBridge content filter on the Detail, e.g. {op = ["insert", "update"]}.
    detail: dict[str, Any] = Field(default_factory=dict)

    @property
    def logical(self) -> str:
        """The CloudFormation logical id prefix: 'realtime-view' -> 'RealtimeView'."""
        return "".join(part[:1].upper() + part[1:] for part in self.name.split("-"))


class Producer(_Part):
    source: str = Field(min_length=1)
    bus: str = "default"

    @field_validator("source")
    @classmethod
    def _not_valid(cls, value: str) -> str:
        if value.startswith(VALID_PREFIX):
            raise ValueError(
                f"a producer's source may not start with {VALID_PREFIX!r}: those "
                "are the validator's"
            )
        return value


class Consumer(_Part):
    kind: Literal["queue", "bus"] = "queue"
    target: str | None = None  # the queue's or bus's name; default: the consumer's name
    # Producers' sources (``valid.`` is added); none: every valid event.
    sources: tuple[str, ...] = ()

    @property
    def target_name(self) -> str:
        return self.target or self.name

    @property
    def valid_sources(self) -> list[str]:
        return [s if s.startswith(VALID_PREFIX) else VALID_PREFIX + s for s in self.sources]


class Topology(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    central_bus: str
    central_account: str | None = Field(None, pattern=ACCOUNT_PATTERN)
    central_region: str | None = Field(None, pattern=REGION_PATTERN)
    validation_queue: str = Field("event-validation", pattern=QUEUE_NAME_PATTERN)
    producers: tuple[Producer, ...] = ()
    consumers: tuple[Consumer, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> Topology:
        seen: set[str] = set()
        for part in (*self.producers, *self.consumers):
            if part.logical.lower() in seen:
                raise ValueError(f"two producers or consumers are named {part.name!r}")
            seen.add(part.logical.lower())
        if not self.producers:
            raise ValueError("no producer")
        return self

    @property
    def sources(self) -> list[str]:
        return sorted({p.source for p in self.producers})


def topology_from_settings(settings: Settings) -> Topology:
    """The topology of ``[topology]`` in the TOML file; without producers, this capture's own
    source and bus are the one producer. The central bus is ``CDC_CENTRAL_BUS_NAME``."""
    data = dict(settings.topology)
    if "central_bus" in data:
        raise ConfigError(
            "topology.central_bus in the CDC_CONFIG file",
            "set the central bus with central_bus_name (CDC_CENTRAL_BUS_NAME)",
        )
    if not data.get("producers"):
        data["producers"] = [
            {"name": "producer", "source": settings.event_source, "bus": settings.event_bus_name}
        ]
    try:
        return Topology(central_bus=settings.central_bus_name, **data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in ("topology", *error["loc"]))
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{where} in the CDC_CONFIG file", message) from None


# -- event patterns ---------------------------------------------------------------------------


def _filter(value: Any) -> Any:
    """An EventBridge content filter: objects nest, leaves are lists of values or matchers."""
    if isinstance(value, Mapping):
        return {str(k): _filter(v) for k, v in value.items()}
    return list(value) if isinstance(value, list | tuple) else [value]


def pattern(
    sources: list[Any], detail_types: tuple[str, ...] = (), detail: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {"source": sources}
    if detail_types:
        result["detail-type"] = list(detail_types)
    if detail:
        result["detail"] = _filter(detail)
    return result


def forward_pattern(producer: Producer) -> dict[str, Any]:
    return pattern([producer.source], producer.detail_types, producer.detail)


def validation_pattern(topology: Topology) -> dict[str, Any]:
    # Only the producers' own sources: a valid.* event never goes back to the validator.
    return pattern(list(topology.sources))


def consumer_pattern(consumer: Consumer) -> dict[str, Any]:
    sources: list[Any] = consumer.valid_sources or [{"prefix": VALID_PREFIX}]
    return pattern(sources, consumer.detail_types, consumer.detail)

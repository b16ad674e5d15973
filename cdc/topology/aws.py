"""The multi-account topology as code: producers forward to a central bus, the validator checks
what arrives, rules fan ``valid.*`` events out to the consumers.

```
producer account(s)                 central account                        consumers
bus --rule {source: [S]}--> central bus --rule {source: [S...]}--> validation queue -> cdc validate
   (event bus target, role, DLQ)    central bus <-- PutEvents valid.S --------------------+
                                    central bus --rule {source: valid.*, ...}-->
                                        queue / bus (DLQ each)
```

``render`` writes one CloudFormation template (YAML) for every account: each part carries a
condition on ``AWS::AccountId`` and ``AWS::Region``, so the same template is deployed in each
account (a StackSet, or one stack per account) and creates only that account's part. The
central bus only lets each producer account put events of its own source, so no producer can
forge a ``valid.`` event. ``apply`` creates the same resources through boto3 for the account
of the caller's credentials (used against moto's server, where the accounts are buses of one
account). Both read the same ``Topology``, built from ``[topology]`` in the TOML file.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cdc.bus.incoming import VALID_PREFIX
from cdc.core.errors import ConfigError
from cdc.core.settings import Settings

log = logging.getLogger(__name__)

ACCOUNT_PATTERN = r"^\d{12}$"
# EventBridge keeps retrying a target for up to 24 hours (185 attempts) before the DLQ.
RETRY_POLICY = {"MaximumEventAgeInSeconds": 86_400, "MaximumRetryAttempts": 185}
DLQ_RETENTION_SECONDS = 1_209_600  # 14 days, SQS's maximum
MAX_RECEIVE_COUNT = 5
Template = dict[str, Any]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9-]{0,39}$")
    account: str | None = Field(None, pattern=ACCOUNT_PATTERN)
    region: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
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
    central_region: str | None = Field(None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    validation_queue: str = Field("event-validation", pattern=r"^[A-Za-z0-9_-]{1,76}$")
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


# -- event patterns (pure) --------------------------------------------------------------------


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


# -- the CloudFormation template (pure) -------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def _arn(name: str) -> dict[str, list[str]]:
    return {"Fn::GetAtt": [name, "Arn"]}


def _sub(text: str) -> dict[str, str]:
    return {"Fn::Sub": text}


def _in(account: str, region: str) -> dict[str, Any]:
    return {
        "Fn::And": [
            {"Fn::Equals": [_ref("AWS::AccountId"), _ref(account)]},
            {"Fn::Equals": [_ref("AWS::Region"), _ref(region)]},
        ]
    }


def _parameter(
    description: str, default: str | None = None, allowed: str | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {"Type": "String", "Description": description}
    if default is not None:
        result["Default"] = default
    if allowed is not None:
        result["AllowedPattern"] = allowed
    return result


def _account(description: str, default: str | None) -> dict[str, Any]:
    return _parameter(description, default, ACCOUNT_PATTERN)


def _bus_arn(region: str, account: str, name: str) -> dict[str, str]:
    return _sub(
        f"arn:${{AWS::Partition}}:events:${{{region}}}:${{{account}}}:event-bus/${{{name}}}"
    )


def _events_role(bus_arn: Any, condition: str) -> dict[str, Any]:
    return {
        "Type": "AWS::IAM::Role",
        "Condition": condition,
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "events.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            },
            "Policies": [
                {
                    "PolicyName": "put-events",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            {"Effect": "Allow", "Action": "events:PutEvents", "Resource": bus_arn}
                        ],
                    },
                }
            ],
        },
    }


def _queue(condition: str, name: Any = None, dead_letter: str | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {"SqsManagedSseEnabled": True}
    if name is not None:
        properties["QueueName"] = name
    if dead_letter is None:
        properties["MessageRetentionPeriod"] = DLQ_RETENTION_SECONDS
    else:
        properties["VisibilityTimeout"] = 60
        properties["RedrivePolicy"] = {
            "deadLetterTargetArn": _arn(dead_letter),
            "maxReceiveCount": MAX_RECEIVE_COUNT,
        }
    return {"Type": "AWS::SQS::Queue", "Condition": condition, "Properties": properties}


def _queue_policy(condition: str, queues: list[str], rule: str) -> dict[str, Any]:
    """Lets the rule's targets (and their dead-letter config) send to these queues."""
    return {
        "Type": "AWS::SQS::QueuePolicy",
        "Condition": condition,
        "Properties": {
            "Queues": [_ref(q) for q in queues],
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": f"From{rule}{index}",
                        "Effect": "Allow",
                        "Principal": {"Service": "events.amazonaws.com"},
                        "Action": "sqs:SendMessage",
                        "Resource": _arn(queue),
                        "Condition": {"ArnEquals": {"aws:SourceArn": _arn(rule)}},
                    }
                    for index, queue in enumerate(queues)
                ],
            },
        },
    }


def _rule(
    condition: str,
    name: Any,
    bus: Any,
    event_pattern: dict[str, Any],
    target: dict[str, Any],
    description: str,
) -> dict[str, Any]:
    return {
        "Type": "AWS::Events::Rule",
        "Condition": condition,
        "Properties": {
            "Name": name,
            "Description": description,
            "EventBusName": bus,
            "EventPattern": event_pattern,
            "State": "ENABLED",
            "Targets": [{**target, "RetryPolicy": dict(RETRY_POLICY)}],
        },
    }


def template(topology: Topology) -> Template:
    """The CloudFormation template as a document (``render`` writes it as YAML)."""
    parameters: dict[str, Any] = {
        "CentralAccountId": _account(
            "the central event-processing account", topology.central_account
        ),
        "CentralRegion": _parameter("the central bus's region", topology.central_region),
        "CentralBusName": _parameter("the central event bus", topology.central_bus),
        "ValidationQueueName": _parameter(
            "the queue the validator (cdc validate) reads", topology.validation_queue
        ),
    }
    conditions: dict[str, Any] = {"InCentral": _in("CentralAccountId", "CentralRegion")}
    resources: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    central_arn = _bus_arn("CentralRegion", "CentralAccountId", "CentralBusName")

    for producer in topology.producers:
        p = producer.logical
        parameters[f"{p}AccountId"] = _account(
            f"producer {producer.name}'s account", producer.account
        )
        parameters[f"{p}Region"] = _parameter(f"producer {producer.name}'s region", producer.region)
        parameters[f"{p}BusName"] = _parameter(
            f"producer {producer.name}'s event bus", producer.bus
        )
        condition = f"In{p}"
        conditions[condition] = _in(f"{p}AccountId", f"{p}Region")
        resources[f"{p}ForwardRole"] = _events_role(central_arn, condition)
        resources[f"{p}ForwardDeadLetterQueue"] = _queue(condition)
        resources[f"{p}ForwardDeadLetterQueuePolicy"] = _queue_policy(
            condition, [f"{p}ForwardDeadLetterQueue"], f"{p}ForwardRule"
        )
        resources[f"{p}ForwardRule"] = _rule(
            condition,
            f"{producer.name}-forward-to-central",
            _ref(f"{p}BusName"),
            forward_pattern(producer),
            {
                "Id": "central-bus",
                "Arn": central_arn,
                "RoleArn": _arn(f"{p}ForwardRole"),
                "DeadLetterConfig": {"Arn": _arn(f"{p}ForwardDeadLetterQueue")},
            },
            f"forwards {producer.source} events to the central bus",
        )
        # The central bus takes only this producer's own source from its account.
        resources[f"{p}CentralBusPolicy"] = {
            "Type": "AWS::Events::EventBusPolicy",
            "Condition": "InCentral",
            "Properties": {
                "EventBusName": _ref("CentralBus"),
                "StatementId": f"{producer.name}-puts-events"[:64],
                "Statement": {
                    "Effect": "Allow",
                    "Principal": {
                        "AWS": _sub(f"arn:${{AWS::Partition}}:iam::${{{p}AccountId}}:root")
                    },
                    "Action": "events:PutEvents",
                    "Resource": _arn("CentralBus"),
                    "Condition": {"StringEquals": {"events:source": [producer.source]}},
                },
            },
        }

    resources["CentralBus"] = {
        "Type": "AWS::Events::EventBus",
        "Condition": "InCentral",
        "Properties": {"Name": _ref("CentralBusName")},
    }
    resources["ValidationDeadLetterQueue"] = _queue("InCentral", _sub("${ValidationQueueName}-dlq"))
    resources["ValidationQueue"] = _queue(
        "InCentral", _ref("ValidationQueueName"), "ValidationDeadLetterQueue"
    )
    resources["ValidationQueuePolicy"] = _queue_policy(
        "InCentral", ["ValidationQueue", "ValidationDeadLetterQueue"], "ValidationRule"
    )
    resources["ValidationRule"] = _rule(
        "InCentral",
        "validation",
        _ref("CentralBus"),
        validation_pattern(topology),
        {
            "Id": "validation-queue",
            "Arn": _arn("ValidationQueue"),
            "DeadLetterConfig": {"Arn": _arn("ValidationDeadLetterQueue")},
        },
        "sends the producers' events to the validator",
    )
    outputs["CentralBusArn"] = {"Condition": "InCentral", "Value": _arn("CentralBus")}
    outputs["ValidationQueueUrl"] = {"Condition": "InCentral", "Value": _ref("ValidationQueue")}

    for consumer in topology.consumers:
        c = consumer.logical
        dead_letter = f"{c}DeadLetterQueue"
        target: dict[str, Any] = {
            "Id": consumer.name,
            "DeadLetterConfig": {"Arn": _arn(dead_letter)},
        }
        if consumer.kind == "queue":
            parameters[f"{c}QueueName"] = _parameter(
                f"consumer {consumer.name}'s queue", consumer.target_name
            )
            resources[dead_letter] = _queue("InCentral", _sub(f"${{{c}QueueName}}-dlq"))
            resources[f"{c}Queue"] = _queue("InCentral", _ref(f"{c}QueueName"), dead_letter)
            resources[f"{c}QueuePolicy"] = _queue_policy(
                "InCentral", [f"{c}Queue", dead_letter], f"{c}Rule"
            )
            target["Arn"] = _arn(f"{c}Queue")
            outputs[f"{c}QueueUrl"] = {"Condition": "InCentral", "Value": _ref(f"{c}Queue")}
        else:
            parameters[f"{c}AccountId"] = _account(
                f"consumer {consumer.name}'s account", consumer.account
            )
            parameters[f"{c}Region"] = _parameter(
                f"consumer {consumer.name}'s region", consumer.region
            )
            parameters[f"{c}BusName"] = _parameter(
                f"consumer {consumer.name}'s event bus", consumer.target_name
            )
            bus_arn = _bus_arn(f"{c}Region", f"{c}AccountId", f"{c}BusName")
            resources[dead_letter] = _queue("InCentral")
            resources[f"{c}DeadLetterQueuePolicy"] = _queue_policy(
                "InCentral", [dead_letter], f"{c}Rule"
            )
            resources[f"{c}DeliveryRole"] = _events_role(bus_arn, "InCentral")
            target.update({"Arn": bus_arn, "RoleArn": _arn(f"{c}DeliveryRole")})
            # In the consumer's account: its bus, open to the central account's valid events.
            conditions[f"In{c}"] = _in(f"{c}AccountId", f"{c}Region")
            resources[f"{c}Bus"] = {
                "Type": "AWS::Events::EventBus",
                "Condition": f"In{c}",
                "Properties": {"Name": _ref(f"{c}BusName")},
            }
            resources[f"{c}BusPolicy"] = {
                "Type": "AWS::Events::EventBusPolicy",
                "Condition": f"In{c}",
                "Properties": {
                    "EventBusName": _ref(f"{c}Bus"),
                    "StatementId": f"central-to-{consumer.name}"[:64],
                    "Statement": {
                        "Effect": "Allow",
                        "Principal": {
                            "AWS": _sub("arn:${AWS::Partition}:iam::${CentralAccountId}:root")
                        },
                        "Action": "events:PutEvents",
                        "Resource": _arn(f"{c}Bus"),
                    },
                },
            }
        resources[f"{c}Rule"] = _rule(
            "InCentral",
            f"route-to-{consumer.name}",
            _ref("CentralBus"),
            consumer_pattern(consumer),
            target,
            f"routes valid events to {consumer.name} ({consumer.kind})",
        )

    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": (
            "Event validation topology (strangler-cdc): producers forward to a "
            "central bus, `cdc validate` republishes valid events as valid.<source>, "
            "rules route them to consumers. Deploy in every account; each creates "
            "its own part."
        ),
        "Parameters": parameters,
        "Conditions": conditions,
        "Resources": resources,
        "Outputs": outputs,
    }


class _Dumper(yaml.SafeDumper):
    """Block style, keys in the order written, and no anchors or aliases: CloudFormation
    refuses YAML aliases, and the template shares values (the central bus's ARN)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(topology: Topology) -> str:
    text = yaml.dump(
        template(topology),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        width=120,
        allow_unicode=True,
    )
    return (
        "# Generated by `cdc topology render`; edit the [topology] table, not this file.\n" + text
    )


# -- apply through boto3 ----------------------------------------------------------------------


@dataclass
class Applied:
    """What ``apply`` made (or found), for the caller and the operator."""

    account: str
    region: str
    central_bus_arn: str = ""
    validation_queue_url: str = ""
    consumer_queue_urls: dict[str, str] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Clients:
    events: Any
    sqs: Any
    iam: Any


def apply(
    topology: Topology, events: Any = None, sqs: Any = None, iam: Any = None, sts: Any = None
) -> Applied:
    """Create the topology's resources that belong to the caller's account and region (all
    of them when every account is the caller's, as on moto's server). Safe to run again."""
    import boto3
    from botocore.exceptions import NoRegionError

    try:
        events = events or boto3.client("events")
        clients = _Clients(events, sqs or boto3.client("sqs"), iam or boto3.client("iam"))
    except NoRegionError:
        raise ConfigError(
            "AWS_DEFAULT_REGION",
            "set the region to create the resources in, e.g. AWS_DEFAULT_REGION=eu-west-1",
        ) from None
    account = (sts or boto3.client("sts")).get_caller_identity()["Account"]
    region = events.meta.region_name
    result = Applied(account, region)
    central_account = topology.central_account or account
    central_region = topology.central_region or region
    central_here = (central_account, central_region) == (account, region)
    central_arn = (
        f"arn:aws:events:{central_region}:{central_account}:event-bus/{topology.central_bus}"
    )
    result.central_bus_arn = central_arn

    for producer in topology.producers:
        where = (producer.account or account, producer.region or region)
        if where != (account, region):
            result.skipped.append(f"producer {producer.name}: run apply in {where[0]} {where[1]}")
            continue
        if producer.bus != "default":
            _bus(clients, producer.bus, result)
        role = _role(clients, f"{producer.name}-forward-to-central", central_arn, result)
        dlq_url, dlq_arn = _queue_of(clients, f"{producer.name}-forward-dlq", None, result)
        rule = f"{producer.name}-forward-to-central"
        rule_arn = _put_rule(
            clients,
            rule,
            producer.bus,
            forward_pattern(producer),
            {
                "Id": "central-bus",
                "Arn": central_arn,
                "RoleArn": role,
                "DeadLetterConfig": {"Arn": dlq_arn},
            },
            result,
        )
        _allow(clients, [(dlq_url, dlq_arn)], rule_arn)
        if producer.account and producer.account != central_account and central_here:
            events.put_permission(
                EventBusName=topology.central_bus,
                Action="events:PutEvents",
                Principal=producer.account,
                StatementId=f"{producer.name}-puts"[:64],
            )

    if not central_here:
        result.skipped.append(f"central part: run apply in {central_account} {central_region}")
        return result
    _bus(clients, topology.central_bus, result)
    dlq_url, dlq_arn = _queue_of(clients, f"{topology.validation_queue}-dlq", None, result)
    queue_url, queue_arn = _queue_of(clients, topology.validation_queue, dlq_arn, result)
    rule_arn = _put_rule(
        clients,
        "validation",
        topology.central_bus,
        validation_pattern(topology),
        {"Id": "validation-queue", "Arn": queue_arn, "DeadLetterConfig": {"Arn": dlq_arn}},
        result,
    )
    _allow(clients, [(queue_url, queue_arn), (dlq_url, dlq_arn)], rule_arn)
    result.validation_queue_url = queue_url

    for consumer in topology.consumers:
        dlq_url, dlq_arn = _queue_of(clients, f"{consumer.target_name}-dlq", None, result)
        rule = f"route-to-{consumer.name}"
        target: dict[str, Any] = {"Id": consumer.name, "DeadLetterConfig": {"Arn": dlq_arn}}
        queues = [(dlq_url, dlq_arn)]
        if consumer.kind == "queue":
            url, arn = _queue_of(clients, consumer.target_name, dlq_arn, result)
            target["Arn"] = arn
            queues.append((url, arn))
            result.consumer_queue_urls[consumer.name] = url
        else:
            bus_account = consumer.account or account
            bus_region = consumer.region or region
            bus_arn = f"arn:aws:events:{bus_region}:{bus_account}:event-bus/{consumer.target_name}"
            if (bus_account, bus_region) == (account, region):
                _bus(clients, consumer.target_name, result)
            else:
                result.skipped.append(
                    f"consumer bus {consumer.target_name}: create it in "
                    f"{bus_account} {bus_region}, open to {account}"
                )
            target["Arn"] = bus_arn
            target["RoleArn"] = _role(clients, f"route-to-{consumer.name}", bus_arn, result)
        rule_arn = _put_rule(
            clients, rule, topology.central_bus, consumer_pattern(consumer), target, result
        )
        _allow(clients, queues, rule_arn)
    return result


def _bus(clients: _Clients, name: str, result: Applied) -> None:
    from botocore.exceptions import ClientError

    try:
        clients.events.create_event_bus(Name=name)
        result.done.append(f"event bus {name}")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceAlreadyExistsException":
            raise


def _role(clients: _Clients, name: str, bus_arn: str, result: Applied) -> str:
    from botocore.exceptions import ClientError

    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    try:
        arn: str = clients.iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(trust)
        )["Role"]["Arn"]
        result.done.append(f"role {name}")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "EntityAlreadyExists":
            raise
        arn = clients.iam.get_role(RoleName=name)["Role"]["Arn"]
    clients.iam.put_role_policy(
        RoleName=name,
        PolicyName="put-events",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "events:PutEvents", "Resource": bus_arn}
                ],
            }
        ),
    )
    return arn


def _queue_of(
    clients: _Clients, name: str, dead_letter_arn: str | None, result: Applied
) -> tuple[str, str]:
    attributes = {"SqsManagedSseEnabled": "true"}
    if dead_letter_arn is None:
        attributes["MessageRetentionPeriod"] = str(DLQ_RETENTION_SECONDS)
    else:
        attributes["VisibilityTimeout"] = "60"
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": MAX_RECEIVE_COUNT}
        )
    url: str = clients.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn: str = clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    result.done.append(f"queue {name}")
    return url, arn


def _put_rule(
    clients: _Clients,
    name: str,
    bus: str,
    event_pattern: dict[str, Any],
    target: dict[str, Any],
    result: Applied,
) -> str:
    arn: str = clients.events.put_rule(
        Name=name, EventBusName=bus, State="ENABLED", EventPattern=json.dumps(event_pattern)
    )["RuleArn"]
    clients.events.put_targets(
        Rule=name, EventBusName=bus, Targets=[{**target, "RetryPolicy": dict(RETRY_POLICY)}]
    )
    result.done.append(f"rule {name} on {bus} -> {target['Arn']}")
    return arn


def _allow(clients: _Clients, queues: list[tuple[str, str]], rule_arn: str) -> None:
    for url, arn in queues:
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": re.sub(r"[^A-Za-z0-9]", "", rule_arn)[-64:],
                    "Effect": "Allow",
                    "Principal": {"Service": "events.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
                }
            ],
        }
        clients.sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})

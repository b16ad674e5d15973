"""The topology created through boto3 for the account and region of the caller's credentials:
the parts the template would create there (all of them when every account is the caller's, as
on moto's server, where the accounts are buses of one account). The other parts are listed in
``Applied.skipped`` for the operator to apply where they belong. Safe to run again."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from cdc.core.errors import ConfigError
from cdc.topology.delivery import (
    DLQ_RETENTION_SECONDS,
    MAX_RECEIVE_COUNT,
    RETRY_POLICY,
    VISIBILITY_TIMEOUT_SECONDS,
    events_trust_policy,
    put_events_policy,
)
from cdc.topology.model import (
    Consumer,
    Producer,
    Topology,
    consumer_pattern,
    forward_pattern,
    validation_pattern,
)


@dataclass
class Applied:
    """What ``apply`` made (or found), for the caller and the operator."""

    account: str
    region: str
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
    result = Applied(account, events.meta.region_name)
    central_account = topology.central_account or account
    central_region = topology.central_region or result.region
    central_arn = _bus_arn(central_region, central_account, topology.central_bus)

    for producer in topology.producers:
        _apply_producer(clients, producer, central_arn, result)
    if (central_account, central_region) != (account, result.region):
        result.skipped.append(f"central part: run apply in {central_account} {central_region}")
        return result
    _apply_central(clients, topology, result)
    for consumer in topology.consumers:
        _apply_consumer(clients, topology.central_bus, consumer, result)
    return result


def _apply_producer(
    clients: _Clients, producer: Producer, central_arn: str, result: Applied
) -> None:
    """The producer's rule forwarding its source to the central bus, if the producer is here.
    No permission on the central bus is granted to another account: across accounts, the
    template's bus policy admits each producer's source."""
    where = (producer.account or result.account, producer.region or result.region)
    if where != (result.account, result.region):
        result.skipped.append(f"producer {producer.name}: run apply in {where[0]} {where[1]}")
        return
    if producer.bus != "default":
        _bus(clients, producer.bus, result)
    role = _role(clients, f"{producer.name}-forward-to-central", central_arn, result)
    dlq_url, dlq_arn = _queue(clients, f"{producer.name}-forward-dlq", None, result)
    rule_arn = _put_rule(
        clients,
        f"{producer.name}-forward-to-central",
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


def _apply_central(clients: _Clients, topology: Topology, result: Applied) -> None:
    """The central bus and the validation queue fed by the rule on the producers' sources."""
    _bus(clients, topology.central_bus, result)
    dlq_url, dlq_arn = _queue(clients, f"{topology.validation_queue}-dlq", None, result)
    queue_url, queue_arn = _queue(clients, topology.validation_queue, dlq_arn, result)
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


def _apply_consumer(
    clients: _Clients, central_bus: str, consumer: Consumer, result: Applied
) -> None:
    """A rule on the central bus routing the consumer's valid events to its queue or bus; a
    bus in another account is left to be created there."""
    dlq_url, dlq_arn = _queue(clients, f"{consumer.target_name}-dlq", None, result)
    target: dict[str, Any] = {"Id": consumer.name, "DeadLetterConfig": {"Arn": dlq_arn}}
    queues = [(dlq_url, dlq_arn)]
    if consumer.kind == "queue":
        url, arn = _queue(clients, consumer.target_name, dlq_arn, result)
        target["Arn"] = arn
        queues.append((url, arn))
        result.consumer_queue_urls[consumer.name] = url
    else:
        bus_account = consumer.account or result.account
        bus_region = consumer.region or result.region
        bus_arn = _bus_arn(bus_region, bus_account, consumer.target_name)
        if (bus_account, bus_region) == (result.account, result.region):
            _bus(clients, consumer.target_name, result)
        else:
            result.skipped.append(
                f"consumer bus {consumer.target_name}: create it in "
                f"{bus_account} {bus_region}, open to {result.account}"
            )
        target["Arn"] = bus_arn
        target["RoleArn"] = _role(clients, f"route-to-{consumer.name}", bus_arn, result)
    rule_arn = _put_rule(
        clients,
        f"route-to-{consumer.name}",
        central_bus,
        consumer_pattern(consumer),
        target,
        result,
    )
    _allow(clients, queues, rule_arn)


# -- one resource each, created or found ------------------------------------------------------


def _bus_arn(region: str, account: str, name: str) -> str:
    return f"arn:aws:events:{region}:{account}:event-bus/{name}"


def _bus(clients: _Clients, name: str, result: Applied) -> None:
    from botocore.exceptions import ClientError

    try:
        clients.events.create_event_bus(Name=name)
        result.done.append(f"event bus {name}")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceAlreadyExistsException":
            raise


def _role(clients: _Clients, name: str, bus_arn: str, result: Applied) -> str:
    """A role EventBridge assumes to put events on ``bus_arn``; returns its ARN."""
    from botocore.exceptions import ClientError

    try:
        arn: str = clients.iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(events_trust_policy())
        )["Role"]["Arn"]
        result.done.append(f"role {name}")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "EntityAlreadyExists":
            raise
        arn = clients.iam.get_role(RoleName=name)["Role"]["Arn"]
    clients.iam.put_role_policy(
        RoleName=name,
        PolicyName="put-events",
        PolicyDocument=json.dumps(put_events_policy(bus_arn)),
    )
    return arn


def _queue(
    clients: _Clients, name: str, dead_letter_arn: str | None, result: Applied
) -> tuple[str, str]:
    """A queue (without ``dead_letter_arn``, a dead-letter queue itself); returns its URL
    and ARN."""
    attributes = {"SqsManagedSseEnabled": "true"}
    if dead_letter_arn is None:
        attributes["MessageRetentionPeriod"] = str(DLQ_RETENTION_SECONDS)
    else:
        attributes["VisibilityTimeout"] = str(VISIBILITY_TIMEOUT_SECONDS)
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
    """Lets the rule send to these queues (its target and its dead-letter queue). The policy
    is replaced whole, so each queue is written by one rule."""
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

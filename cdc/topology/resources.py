"""The pieces the CloudFormation template is built from: one function per resource kind, the
parameters, and the intrinsic functions (``Ref``, ``Fn::GetAtt``, ``Fn::Sub``, the account
and region condition). Each returns a fresh document, so no two resources share a value."""

from __future__ import annotations

from typing import Any

from cdc.topology.delivery import (
    DLQ_RETENTION_SECONDS,
    MAX_RECEIVE_COUNT,
    RETRY_POLICY,
    VISIBILITY_TIMEOUT_SECONDS,
    events_trust_policy,
    put_events_policy,
)
from cdc.topology.model import ACCOUNT_PATTERN


def event_bus(condition: str, name_parameter: str) -> dict[str, Any]:
    return {
        "Type": "AWS::Events::EventBus",
        "Condition": condition,
        "Properties": {"Name": ref(name_parameter)},
    }


def bus_policy(
    condition: str,
    bus: str,
    statement_id: str,
    principal: str,
    only: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Lets the account that the parameter ``principal`` names put events on ``bus``
    (``only`` those matching an IAM condition)."""
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"AWS": sub(f"arn:${{AWS::Partition}}:iam::${{{principal}}}:root")},
        "Action": "events:PutEvents",
        "Resource": arn(bus),
    }
    if only is not None:
        statement["Condition"] = only
    return {
        "Type": "AWS::Events::EventBusPolicy",
        "Condition": condition,
        "Properties": {
            "EventBusName": ref(bus),
            "StatementId": statement_id[:64],
            "Statement": statement,
        },
    }


def events_role(target_bus: Any, condition: str) -> dict[str, Any]:
    return {
        "Type": "AWS::IAM::Role",
        "Condition": condition,
        "Properties": {
            "AssumeRolePolicyDocument": events_trust_policy(),
            "Policies": [
                {"PolicyName": "put-events", "PolicyDocument": put_events_policy(target_bus)}
            ],
        },
    }


def queue(condition: str, name: Any = None, dead_letter: str | None = None) -> dict[str, Any]:
    """A queue; without ``dead_letter`` it is a dead-letter queue itself."""
    properties: dict[str, Any] = {"SqsManagedSseEnabled": True}
    if name is not None:
        properties["QueueName"] = name
    if dead_letter is None:
        properties["MessageRetentionPeriod"] = DLQ_RETENTION_SECONDS
    else:
        properties["VisibilityTimeout"] = VISIBILITY_TIMEOUT_SECONDS
        properties["RedrivePolicy"] = {
            "deadLetterTargetArn": arn(dead_letter),
            "maxReceiveCount": MAX_RECEIVE_COUNT,
        }
    return {"Type": "AWS::SQS::Queue", "Condition": condition, "Properties": properties}


def queue_policy(condition: str, queues: list[str], rule_id: str) -> dict[str, Any]:
    """Lets the rule (its logical id) send to these queues: its target and its dead-letter
    queue."""
    return {
        "Type": "AWS::SQS::QueuePolicy",
        "Condition": condition,
        "Properties": {
            "Queues": [ref(q) for q in queues],
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": f"From{rule_id}{index}",
                        "Effect": "Allow",
                        "Principal": {"Service": "events.amazonaws.com"},
                        "Action": "sqs:SendMessage",
                        "Resource": arn(queue_id),
                        "Condition": {"ArnEquals": {"aws:SourceArn": arn(rule_id)}},
                    }
                    for index, queue_id in enumerate(queues)
                ],
            },
        },
    }


def rule(
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


# -- parameters and intrinsic functions -------------------------------------------------------


def parameter(
    description: str, default: str | None = None, allowed: str | None = None
) -> dict[str, Any]:
    result: dict[str, Any] = {"Type": "String", "Description": description}
    if default is not None:
        result["Default"] = default
    if allowed is not None:
        result["AllowedPattern"] = allowed
    return result


def account_parameter(description: str, default: str | None) -> dict[str, Any]:
    return parameter(description, default, ACCOUNT_PATTERN)


def bus_arn(region: str, account: str, name: str) -> dict[str, str]:
    """A bus's ARN from the parameters naming its region, account and name."""
    return sub(f"arn:${{AWS::Partition}}:events:${{{region}}}:${{{account}}}:event-bus/${{{name}}}")


def condition_in(account: str, region: str) -> dict[str, Any]:
    """True in the account and region these parameters name."""
    return {
        "Fn::And": [
            {"Fn::Equals": [ref("AWS::AccountId"), ref(account)]},
            {"Fn::Equals": [ref("AWS::Region"), ref(region)]},
        ]
    }


def ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def arn(name: str) -> dict[str, list[str]]:
    return {"Fn::GetAtt": [name, "Arn"]}


def sub(text: str) -> dict[str, str]:
    return {"Fn::Sub": text}

"""The topology template: valid CloudFormation (cfn-lint), and the rules, targets and filters
the pattern needs, each part conditioned on its own account."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc.core.errors import ConfigError
from cdc.core.settings import load_settings
from cdc.topology.model import Topology, topology_from_settings
from cdc.topology.template import render, template

CONFIG = """
database_url = "postgresql://capture@legacy-db/shop"
tables = ["orders"]
central_bus_name = "central-events"

[topology]
central_account = "111111111111"
central_region = "eu-west-1"

[[topology.producers]]
name = "shop"
source = "legacy.shop"
bus = "legacy-shop"
account = "222222222222"
region = "eu-west-1"

[[topology.producers]]
name = "billing"
source = "legacy.billing"
account = "444444444444"
detail_types = ["public.invoices.insert"]

[[topology.consumers]]
name = "realtime-view"
sources = ["legacy.shop"]
detail_types = ["public.orders.insert", "public.orders.update"]
detail = { op = ["insert", "update"], after = { status = "paid" } }

[[topology.consumers]]
name = "history-archive"
kind = "bus"
target = "analytics"
account = "333333333333"
region = "eu-central-1"
"""


def topology(tmp_path: Path, text: str = CONFIG) -> Topology:
    path = tmp_path / "cdc.toml"
    path.write_text(text)
    return topology_from_settings(load_settings({"CDC_CONFIG": str(path)}))


def rendered(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "topology.yaml"
    path.write_text(render(topology(tmp_path)))
    return path, yaml.safe_load(path.read_text())


def test_the_rendered_template_passes_cfn_lint(tmp_path: Path) -> None:
    from cfnlint.api import ManualArgs, lint

    path, _ = rendered(tmp_path)
    matches = lint(path.read_text(), config=ManualArgs(regions=["eu-west-1", "eu-central-1"]))
    assert [str(m) for m in matches] == []


def test_the_default_topology_passes_cfn_lint_too(tmp_path: Path) -> None:
    from cfnlint.api import ManualArgs, lint

    settings = load_settings({"CDC_DATABASE_URL": "postgresql://u@h/shop", "CDC_TABLES": "orders"})
    text = render(topology_from_settings(settings))
    assert lint(text, config=ManualArgs(regions=["us-east-1"])) == []
    # This capture is the one producer; no consumer yet
    rules = {
        k: v
        for k, v in yaml.safe_load(text)["Resources"].items()
        if v["Type"] == "AWS::Events::Rule"
    }
    assert rules["ProducerForwardRule"]["Properties"]["EventPattern"] == {"source": ["legacy.shop"]}
    assert set(rules) == {"ProducerForwardRule", "ValidationRule"}


def target_of(resource: dict[str, Any]) -> dict[str, Any]:
    [target] = resource["Properties"]["Targets"]
    return target


def test_producers_forward_their_source_to_the_central_bus_with_a_role(tmp_path: Path) -> None:
    _, doc = rendered(tmp_path)
    resources = doc["Resources"]
    rule = resources["ShopForwardRule"]
    assert rule["Condition"] == "InShop"
    assert rule["Properties"]["EventBusName"] == {"Ref": "ShopBusName"}
    assert rule["Properties"]["EventPattern"] == {"source": ["legacy.shop"]}
    target = target_of(rule)
    assert target["Arn"] == {
        "Fn::Sub": "arn:${AWS::Partition}:events:${CentralRegion}:"
        "${CentralAccountId}:event-bus/${CentralBusName}"
    }
    assert target["RoleArn"] == {"Fn::GetAtt": ["ShopForwardRole", "Arn"]}
    assert target["DeadLetterConfig"] == {
        "Arn": {"Fn::GetAtt": ["ShopForwardDeadLetterQueue", "Arn"]}
    }
    role = resources["ShopForwardRole"]["Properties"]
    [statement] = role["Policies"][0]["PolicyDocument"]["Statement"]
    assert statement["Action"] == "events:PutEvents" and statement["Resource"] == target["Arn"]
    # A producer's filter on detail-type narrows what it forwards
    assert resources["BillingForwardRule"]["Properties"]["EventPattern"] == {
        "source": ["legacy.billing"],
        "detail-type": ["public.invoices.insert"],
    }
    # The central bus takes from each producer account only that producer's source
    policy = resources["ShopCentralBusPolicy"]
    assert policy["Condition"] == "InCentral"
    assert policy["Properties"]["Statement"]["Principal"] == {
        "AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${ShopAccountId}:root"}
    }
    assert policy["Properties"]["Statement"]["Condition"] == {
        "StringEquals": {"events:source": ["legacy.shop"]}
    }


def test_the_central_account_validates_producer_events_and_routes_valid_ones(
    tmp_path: Path,
) -> None:
    _, doc = rendered(tmp_path)
    resources = doc["Resources"]
    validation = resources["ValidationRule"]
    assert validation["Condition"] == "InCentral"
    assert validation["Properties"]["EventBusName"] == {"Ref": "CentralBus"}
    # Only the producers' own sources: a valid.* event never returns to the validator
    assert validation["Properties"]["EventPattern"] == {"source": ["legacy.billing", "legacy.shop"]}
    assert target_of(validation)["Arn"] == {"Fn::GetAtt": ["ValidationQueue", "Arn"]}
    assert resources["ValidationQueue"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["ValidationDeadLetterQueue", "Arn"]
    }

    view = resources["RealtimeViewRule"]
    assert view["Properties"]["EventPattern"] == {
        "source": ["valid.legacy.shop"],
        "detail-type": ["public.orders.insert", "public.orders.update"],
        "detail": {"op": ["insert", "update"], "after": {"status": ["paid"]}},
    }
    assert target_of(view)["Arn"] == {"Fn::GetAtt": ["RealtimeViewQueue", "Arn"]}
    archive = resources["HistoryArchiveRule"]
    assert archive["Properties"]["EventPattern"] == {"source": [{"prefix": "valid."}]}
    assert target_of(archive)["Arn"] == {
        "Fn::Sub": "arn:${AWS::Partition}:events:"
        "${HistoryArchiveRegion}:${HistoryArchiveAccountId}:"
        "event-bus/${HistoryArchiveBusName}"
    }
    assert target_of(archive)["RoleArn"] == {"Fn::GetAtt": ["HistoryArchiveDeliveryRole", "Arn"]}
    # Every rule's target has a dead-letter queue that the rule may write to
    for name, resource in resources.items():
        if resource["Type"] != "AWS::Events::Rule":
            continue
        dead_letter = target_of(resource)["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]
        assert resources[dead_letter]["Type"] == "AWS::SQS::Queue", name
        policies = [
            r
            for r in resources.values()
            if r["Type"] == "AWS::SQS::QueuePolicy"
            and {"Ref": dead_letter} in r["Properties"]["Queues"]
        ]
        [statement] = [
            s
            for p in policies
            for s in p["Properties"]["PolicyDocument"]["Statement"]
            if s["Resource"] == {"Fn::GetAtt": [dead_letter, "Arn"]}
        ]
        assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == {"Fn::GetAtt": [name, "Arn"]}
    # The consumer's own bus lives in its account, open to the central account
    assert resources["HistoryArchiveBus"]["Condition"] == "InHistoryArchive"
    assert resources["HistoryArchiveBusPolicy"]["Properties"]["Statement"]["Principal"] == {
        "AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${CentralAccountId}:root"}
    }


def test_parameters_and_conditions_per_account(tmp_path: Path) -> None:
    _, doc = rendered(tmp_path)
    parameters = doc["Parameters"]
    assert parameters["CentralAccountId"]["Default"] == "111111111111"
    assert parameters["CentralBusName"]["Default"] == "central-events"
    assert parameters["ShopAccountId"]["AllowedPattern"] == r"^\d{12}$"
    assert "Default" not in parameters["BillingRegion"]  # not configured: given at deploy time
    assert parameters["HistoryArchiveBusName"]["Default"] == "analytics"
    assert doc["Conditions"]["InShop"] == {
        "Fn::And": [
            {"Fn::Equals": [{"Ref": "AWS::AccountId"}, {"Ref": "ShopAccountId"}]},
            {"Fn::Equals": [{"Ref": "AWS::Region"}, {"Ref": "ShopRegion"}]},
        ]
    }
    for name, resource in doc["Resources"].items():
        assert resource["Condition"] in doc["Conditions"], name


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (
            '[[topology.producers]]\nname = "x"\nsource = "valid.shop"\n',
            "may not start with 'valid.'",
        ),
        (
            '[[topology.producers]]\nname = "x"\nsource = "a"\n[[topology.consumers]]\nname = "x"\n',
            "named 'x'",
        ),
        ('[[topology.producers]]\nname = "x y"\nsource = "a"\n', "topology.producers.0.name"),
        ('central_bus = "b"\n', "CDC_CENTRAL_BUS_NAME"),
    ],
)
def test_topology_mistakes_are_named(tmp_path: Path, extra: str, says: str) -> None:
    text = 'database_url = "postgresql://u@h/shop"\ntables = ["t"]\n[topology]\n' + extra
    with pytest.raises(ConfigError, match=says):
        topology(tmp_path, text)


def test_no_yaml_aliases_in_the_template(tmp_path: Path) -> None:
    # CloudFormation refuses YAML aliases; the template shares values between resources
    text = render(topology(tmp_path))
    assert "&id" not in text and "*id" not in text
    assert template(topology(tmp_path)) == yaml.safe_load(text)


GOLDEN = Path(__file__).parent / "data" / "topology"


@pytest.mark.parametrize("name", sorted(p.stem for p in GOLDEN.glob("*.toml")))
def test_the_rendered_template_is_unchanged(name: str) -> None:
    # The rendered YAML is checked in so that any change to a template is a reviewed diff:
    # CDC_CONFIG=tests/unit/data/topology/NAME.toml cdc topology render -o .../NAME.yaml
    settings = load_settings({"CDC_CONFIG": str(GOLDEN / f"{name}.toml")})
    expected = (GOLDEN / f"{name}.yaml").read_text(encoding="utf-8")
    assert render(topology_from_settings(settings)) == expected


def test_the_commands_are_wired_into_cdc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cdc.cli import main, parser
    from cdc.commands import validation as validation_cli

    commands = {
        ("schemas", "generate"): validation_cli.cmd_schemas_generate,
        ("validate",): validation_cli.cmd_validate,
        ("topology", "render"): validation_cli.cmd_topology_render,
        ("topology", "apply"): validation_cli.cmd_topology_apply,
    }
    for argv, func in commands.items():
        assert parser().parse_args(list(argv)).func is func
    config = tmp_path / "cdc.toml"
    config.write_text(CONFIG)
    monkeypatch.setenv("CDC_CONFIG", str(config))
    out = tmp_path / "out.yaml"
    assert main(["topology", "render", "-o", str(out)]) == 0
    assert (
        yaml.safe_load(out.read_text())["Resources"]["ValidationRule"]["Type"]
        == "AWS::Events::Rule"
    )

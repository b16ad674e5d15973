"""deploy/compose.yaml cannot be started here; check that what it runs is what the CLIs accept,
that its settings are settings the service knows, and that its health checks probe real
endpoints on the health port."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc.cli import parser as cdc_parser
from cdc.core import health
from cdc.core.settings import load_settings
from sync_back.cli import parser as sync_back_parser
from sync_back.mapping import load_mappings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# Services built from this repository's Dockerfile, whose ENTRYPOINT is ["cdc"], CMD ["run"]
OURS = {name: service for name, service in SERVICES.items() if "build" in service}
PARSERS = {"cdc": cdc_parser, "sync-back": sync_back_parser}


def commands(service: dict[str, Any]) -> list[list[str]]:
    """The argument vectors a service runs: the entrypoint and the command, with a
    ``sh -c "a && b"`` entrypoint split into its commands."""
    entrypoint = service.get("entrypoint", ["cdc"])
    command = service.get("command", ["run"])
    if entrypoint == ["sh", "-c"]:
        [script] = command
        return [shlex.split(part) for part in script.split("&&")]
    return [[*entrypoint, *command]]


def test_the_services_are_there() -> None:
    assert {"legacy-db", "cdc-setup", "cdc-worker", "cdc-standby", "sync-back"} <= set(SERVICES)
    assert set(OURS) == {"cdc-setup", "cdc-worker", "cdc-standby", "sync-back"}
    for service in OURS.values():
        assert (DEPLOY / service["build"] / "Dockerfile").exists()


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_command_is_a_real_subcommand(name: str) -> None:
    for argv in commands(OURS[name]):
        program, *args = argv
        assert program in PARSERS, f"{name} runs {program!r}, not cdc or sync-back"
        parsed = PARSERS[program]().parse_args(args)  # SystemExit on an unknown subcommand
        assert callable(parsed.func)


def test_what_each_service_runs() -> None:
    def funcs(name: str) -> list[str]:
        parsed = [PARSERS[argv[0]]().parse_args(argv[1:]) for argv in commands(SERVICES[name])]
        return [f"{args.func.__module__}.{args.func.__name__}" for args in parsed]

    assert funcs("cdc-setup") == [
        "cdc.commands.capture.cmd_migrate",
        "cdc.commands.capture.cmd_setup",
    ]
    assert funcs("cdc-worker") == funcs("cdc-standby") == ["cdc.commands.capture.cmd_run"]
    assert funcs("sync-back") == ["sync_back.cli.cmd_run"]
    assert SERVICES["cdc-setup"]["restart"] == "no"  # a one-off
    for name in ("cdc-worker", "cdc-standby", "sync-back"):
        assert (
            SERVICES[name]["depends_on"]["cdc-setup"]["condition"]
            == "service_completed_successfully"
        )


def test_the_legacy_database_has_logical_wal() -> None:
    command = SERVICES["legacy-db"]["command"]
    assert "wal_level=logical" in command
    assert SERVICES["cdc-setup"]["depends_on"]["legacy-db"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["cdc-worker", "cdc-standby", "sync-back"])
def test_health_checks_probe_a_real_endpoint_on_the_health_port(name: str) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    port = (
        OURS[name]["environment"].get("CDC_HEALTH_PORT")
        or dict(re.findall(r"(CDC_[A-Z_]+)=(\S+)", dockerfile))["CDC_HEALTH_PORT"]
    )
    probe = " ".join(OURS[name]["healthcheck"]["test"])
    [(probed_port, path)] = re.findall(r"http://127\.0\.0\.1:(\d+)(/\w*)", probe)
    assert probed_port == str(port)
    assert path in (health.HEALTHZ, health.READYZ)
    # a standby is alive but not ready (it does not capture): its probe must not be /readyz
    if name != "sync-back":
        assert path == health.HEALTHZ


def interpolate(value: Any) -> str:
    """Compose's ``${NAME:-default}`` with nothing set in the shell: the default."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))


@pytest.mark.parametrize("name", sorted(OURS))
def test_the_settings_load_with_the_mounted_config(name: str) -> None:
    environment = OURS[name]["environment"]
    env = {k: interpolate(v) for k, v in environment.items() if k.startswith("CDC_")}
    # The image's defaults (Dockerfile ENV) under the service's own
    dockerfile = (ROOT / "Dockerfile").read_text()
    env = {**dict(re.findall(r"(CDC_[A-Z_]+)=(\S+)", dockerfile)), **env}
    [mount] = [v for v in OURS[name]["volumes"] if v.split(":")[1] == environment["CDC_CONFIG"]]
    env["CDC_CONFIG"] = str(DEPLOY / mount.split(":")[0])
    settings = load_settings(env)  # ConfigError on an unknown or invalid setting
    assert settings.capture == "logical" and settings.bus == "eventbridge"
    assert len(load_mappings(settings.sync_back, settings.default_schema)) >= 1


@pytest.mark.parametrize("name", sorted(OURS))
def test_boto3_gets_a_region_it_reads(name: str) -> None:
    # boto3 reads AWS_DEFAULT_REGION; AWS_REGION alone would leave the clients without one.
    environment = OURS[name]["environment"]
    assert interpolate(environment.get("AWS_DEFAULT_REGION", "")) != ""

"""The image cannot be built here; check that what it runs is what the CLI accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cdc.cli import parser
from cdc.core.settings import Settings

DOCKERFILE = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()


def instruction(name: str) -> str:
    [value] = re.findall(rf"^{name}\s+(.+)$", DOCKERFILE, flags=re.MULTILINE)
    return value.strip()


def test_entrypoint_and_commands_are_cli_commands() -> None:
    entrypoint = json.loads(instruction("ENTRYPOINT"))
    command = json.loads(instruction("CMD"))
    assert entrypoint == ["cdc"] and command == ["run"]
    args = parser().parse_args(command)
    assert args.func.__name__ == "cmd_run"
    assert parser().parse_args(["migrate"]).func.__name__ == "cmd_migrate"


def test_runs_as_a_non_root_user_with_valid_settings() -> None:
    assert instruction("USER") not in ("root", "0")
    env = dict(re.findall(r"(CDC_[A-Z_]+)=(\S+)", DOCKERFILE))
    assert env  # the image's CDC_* defaults must be settings the service knows
    for name, value in env.items():
        field = name.removeprefix("CDC_").lower()
        assert field in Settings.model_fields, name
        Settings(**{field: value})


def test_the_healthcheck_probes_the_health_port() -> None:
    env = dict(re.findall(r"(CDC_[A-Z_]+)=(\S+)", DOCKERFILE))
    assert f"127.0.0.1:{env['CDC_HEALTH_PORT']}/healthz" in instruction("    CMD")

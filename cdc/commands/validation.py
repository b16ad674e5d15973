"""The validation and topology commands of ``cdc``: ``schemas generate``, ``validate``,
``topology render`` and ``topology apply``. ``cdc.cli.parser`` registers them through
``add_commands``; the heavy imports (jsonschema, boto3, yaml) wait until a command runs."""

from __future__ import annotations

import argparse
import sys
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from cdc.core.errors import CdcError, ConfigError
from cdc.core.settings import Settings, check_toml_keys
from cdc.core.state import StateTables, shown_moment, state_tables

if TYPE_CHECKING:
    from cdc.topology.model import Topology

if TYPE_CHECKING:  # imported when a command runs (see above)
    from cdc.bus.publishers.eventbridge import EventBridgePublisher

# The first migration that has the validator's tables.
VALIDATION_REVISION = "0005"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the commands on the ``cdc`` parser's subparsers."""
    schemas = sub.add_parser("schemas", help="JSON Schemas of the events, per DetailType")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True)
    generate = schemas_sub.add_parser(
        "generate", help="write a schema per DetailType of CDC_TABLES into CDC_SCHEMAS_DIR"
    )
    generate.add_argument("--dir", help="write here instead of CDC_SCHEMAS_DIR")
    generate.add_argument(
        "--force", action="store_true", help="overwrite existing files (they may have been edited)"
    )
    generate.set_defaults(func=cmd_schemas_generate)

    validate = sub.add_parser(
        "validate",
        help="validate events from CDC_VALIDATE_QUEUE_URL and republish valid ones "
        "as valid.<source> to CDC_CENTRAL_BUS_NAME",
    )
    what = validate.add_mutually_exclusive_group()
    what.add_argument(
        "--dead-letters", action="store_true", help="list invalid events with their errors instead"
    )
    what.add_argument(
        "--in-doubt",
        action="store_true",
        help="list events claimed but never confirmed (a crash mid-send)",
    )
    what.add_argument(
        "--resend",
        nargs="*",
        metavar="EVENT_ID",
        help="send events in doubt (all listed ones when no id is given) once "
        "you have checked the consumers did not get them",
    )
    validate.add_argument("--limit", type=int, default=100)
    validate.set_defaults(func=cmd_validate, needs_tables=False)

    topology = sub.add_parser("topology", help="the producer/central/consumer accounts as code")
    topology_sub = topology.add_subparsers(dest="topology_command", required=True)
    render = topology_sub.add_parser("render", help="write the CloudFormation template (YAML)")
    render.add_argument("-o", "--output", help="file to write (default: standard output)")
    render.set_defaults(func=cmd_topology_render, needs_tables=False)
    topology_sub.add_parser(
        "apply", help="create the caller's account's part with boto3 (no CloudFormation)"
    ).set_defaults(func=cmd_topology_apply, needs_tables=False)


def cmd_schemas_generate(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from cdc.core import database
    from cdc.core.catalog import reflect
    from cdc.validate.schemas import table_schemas, write_schemas

    directory = Path(args.dir) if args.dir else settings.schemas_dir
    engine = database.connect(settings)
    for ref in settings.table_refs:
        shape = reflect(engine, ref)
        schemas = table_schemas(
            shape, settings.detail_type_for(ref), settings.event_source, settings.dialect
        )
        for path, written in write_schemas(directory, schemas, overwrite=args.force):
            print(f"wrote {path}" if written else f"kept {path} (exists; --force overwrites)")
    return 0


def check_validation_state(settings: Settings, engine: Engine) -> None:
    from cdc.core import database

    revision = database.current_revision(engine, settings)
    if revision is None or revision < VALIDATION_REVISION:
        raise CdcError(
            f"the validator's tables are missing in {settings.display_url}; run `cdc migrate` first"
        )


def _central_publisher(settings: Settings) -> EventBridgePublisher:
    from cdc.bus.publishers.eventbridge import EventBridgePublisher, check_bus

    try:
        check_bus(settings.central_bus_name)
    except ConfigError as exc:
        if exc.setting != "CDC_EVENT_BUS_NAME":
            raise
        raise ConfigError(
            "CDC_CENTRAL_BUS_NAME",
            f"there is no event bus named "
            f"{settings.central_bus_name!r}; run `cdc topology apply` or correct "
            "the name",
        ) from None
    # No stop event: once a batch's claims are committed, its send must get a verdict, or the
    # events would be in doubt. A stop waits for the batch in hand.
    return EventBridgePublisher.from_environment(
        settings.central_bus_name, settings.max_entry_bytes, concurrency=1
    )


def cmd_validate(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.core import database
    from cdc.validate import state

    engine = database.connect(settings)
    check_validation_state(settings, engine)
    tables = state_tables(settings.dialect, settings.state_schema)
    # A claim younger than the visibility timeout may still be in a running validator's hands.
    settled_after = timedelta(seconds=settings.validate_visibility_timeout)
    if args.dead_letters:
        letters = state.dead_letters(engine, tables, args.limit)
        if not letters:
            print("no dead letters")
        for stored in letters:
            x = stored.letter
            print(
                f"{stored.id}\t{shown_moment(stored.created_at)}\t{x.source}\t"
                f"{x.detail_type}\t{x.event_id}\t"
                f"attempts={stored.attempts}\t{x.reason}"
            )
            for error in x.errors:
                print(f"\t- {error}")
        return 0
    if args.in_doubt or args.resend is not None:
        claims = state.in_doubt(engine, tables, settled_after, args.resend or (), args.limit)
        if args.in_doubt:
            if not claims:
                print("no events in doubt")
            for c in claims:
                print(f"{shown_moment(c.claimed_at)}\t{c.key[0]}\t{c.detail_type}\t{c.key[1]}")
            return 0
        from cdc.validate.validator import resend_in_doubt

        publisher = _central_publisher(settings)
        try:
            sent, refused = resend_in_doubt(engine, tables, publisher, claims)
        finally:
            publisher.close()
        print(f"resent {sent}; refused {len(refused)}")
        for line in refused:
            print(f"  {line}")
        return 1 if refused else 0
    return _run_validator(settings, engine, tables)


def _run_validator(settings: Settings, engine: Engine, tables: StateTables) -> int:
    import boto3

    from cdc.core.signals import install_signal_handlers
    from cdc.validate.registry import SchemaRegistry
    from cdc.validate.validator import Validator

    if not settings.validate_queue_url:
        raise ConfigError(
            "CDC_VALIDATE_QUEUE_URL",
            "name the SQS queue the central bus's "
            "validation rule feeds (`cdc topology apply` prints it)",
        )
    registry = SchemaRegistry.load(settings.schemas_dir)
    if not len(registry):
        raise ConfigError(
            "CDC_SCHEMAS_DIR",
            f"no schema (*.json) in {settings.schemas_dir}: "
            "every event would be a dead letter; run `cdc schemas generate`",
        )
    stop = threading.Event()
    install_signal_handlers(stop)
    publisher = _central_publisher(settings)
    server = None
    try:
        validator = Validator(
            settings, engine, tables, registry, publisher, boto3.client("sqs"), stop
        )
        if settings.health_port is not None:
            from cdc.validate.health import serve_validator

            server = serve_validator(validator, settings.health_port)
        validator.run()
    finally:
        if server is not None:
            server.shutdown()
        publisher.close()
    return 0


def _topology(settings: Settings) -> Topology:
    from cdc.topology.model import Topology, topology_from_settings

    # Typos first, with a hint: the model itself would only say "Extra inputs are not permitted".
    check_toml_keys(settings.topology, Topology, "topology")
    return topology_from_settings(settings)


def cmd_topology_render(settings: Settings, args: argparse.Namespace) -> int:
    from cdc.topology.template import render

    text = render(_topology(settings))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_topology_apply(settings: Settings, _args: argparse.Namespace) -> int:
    from cdc.topology.apply import apply

    result = apply(_topology(settings))
    print(f"account {result.account}, region {result.region}")
    for line in result.done:
        print(f"  ok: {line}")
    for line in result.skipped:
        print(f"  not here: {line}")
    if result.validation_queue_url:
        print(f"CDC_VALIDATE_QUEUE_URL={result.validation_queue_url}")
    for name, url in result.consumer_queue_urls.items():
        print(f"consumer {name}: {url}")
    return 0

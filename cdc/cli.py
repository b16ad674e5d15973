"""``cdc``: the operator's commands. Builds the settings once, hands them to the command, and
turns expected failures into one or two clear lines and an exit status (``cdc.core.exits``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cdc.commands import validation as validation_cli
from cdc.commands.capture import (
    cmd_backfill,
    cmd_dead_letters,
    cmd_demo,
    cmd_grants,
    cmd_migrate,
    cmd_run,
    cmd_setup,
    cmd_status,
)
from cdc.core import logs
from cdc.core.exits import DEBUG_HELP, debug_flag, report
from cdc.core.settings import Settings, load_settings


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="cdc",
        description=(
            "Capture a legacy database's row changes and publish them to Amazon EventBridge. "
            "Configured by CDC_* environment variables and an optional TOML file (CDC_CONFIG)."
        ),
    )
    top.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = top.add_subparsers(dest="command", required=True)
    migrate = sub.add_parser("migrate", help="create or upgrade the service's own schema")
    migrate.add_argument(
        "--drop",
        action="store_true",
        help="remove the service's schema instead, with every record in it (refused while "
        "capture is installed)",
    )
    migrate.add_argument("--yes", action="store_true", help="with --drop: do remove it")
    migrate.add_argument(
        "--force",
        action="store_true",
        help="with --drop: remove the capture triggers, slot and publication as well",
    )
    migrate.set_defaults(func=cmd_migrate, needs_tables=False)
    setup = sub.add_parser(
        "setup",
        help="install capture on CDC_TABLES: triggers (changelog mode), or the publication and "
        "replication slot (logical mode)",
    )
    setup.add_argument("--drop", action="store_true", help="remove them instead")
    setup.set_defaults(func=cmd_setup)
    sub.add_parser("run", help="run the capture worker").set_defaults(func=cmd_run)
    sub.add_parser("status", help="pending changes, last position, lag, dead letters").set_defaults(
        func=cmd_status
    )
    fill = sub.add_parser(
        "backfill",
        help="publish the rows that already exist, as 'read' events",
        description="Publish existing rows in primary-key order, in chunks "
        "reconciled with the live stream. Runs a capture worker until done "
        "(or follows the one that holds the lease); resumes where it stopped.",
    )
    fill.add_argument("tables", nargs="*", metavar="TABLE", help="tracked tables (schema.table)")
    fill.add_argument("--where", help="SQL condition on the table's columns (only those rows)")
    fill.add_argument("--chunk-size", type=int, default=2000, help="rows per chunk (2000)")
    fill.add_argument("--rate", type=float, help="rows per second at most (default: no limit)")
    fill.add_argument("--status", action="store_true", help="list backfills and their progress")
    fill.add_argument("--cancel", action="store_true", help="cancel the running backfills of TABLE")
    fill.add_argument(
        "--detach",
        action="store_true",
        help="only register it, for a capture worker that is running already",
    )
    fill.set_defaults(func=cmd_backfill)
    letters = sub.add_parser("dead-letters", help="list dead letters, or send them again")
    letters.add_argument(
        "--resend",
        nargs="*",
        type=int,
        metavar="ID",
        help="send these dead letters again (all listed ones when no id is given)",
    )
    letters.add_argument("--limit", type=int, default=100)
    letters.set_defaults(func=cmd_dead_letters, needs_tables=False)
    grants = sub.add_parser(
        "grants", help="print least-privilege SQL for the worker and the validator"
    )
    grants.add_argument("--capture-role", default="cdc_capture")
    grants.add_argument(
        "--sync-role",
        default="cdc_sync_back",
        help="kept for old scripts; `sync-back grants --role` prints that role",
    )
    grants.add_argument("--validator-role", default="cdc_validator")
    grants.set_defaults(func=cmd_grants)
    sub.add_parser(
        "demo", help="insert, update and delete a row of the embedded demo table"
    ).set_defaults(func=cmd_demo)
    validation_cli.add_commands(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    debug, arguments = debug_flag(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(arguments)
    settings: Settings | None = None
    try:
        # Commands that neither capture nor set capture up run without CDC_TABLES.
        settings = load_settings(require_tables=getattr(args, "needs_tables", True))
        logs.configure("DEBUG" if debug else settings.log_level, settings.log_format)
        code: int = args.func(settings, args)
        return code
    except Exception as exc:
        debug = debug or (settings is not None and settings.log_level == "DEBUG")
        status = report("cdc", exc, settings.url if settings else None, debug)
        if status is None:
            raise  # not a failure anybody foresaw: its traceback is the report
        return status


if __name__ == "__main__":
    sys.exit(main())

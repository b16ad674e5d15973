"""``sync-back``: the reverse consumer's commands. Same settings as ``cdc`` (CDC_* variables and
the CDC_CONFIG file, whose ``[sync_back]`` table holds the mappings)."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence

from sqlalchemy import select

from cdc.bus.sqs import SqsClient
from cdc.core import database, logs
from cdc.core.database import check_migrated
from cdc.core.errors import ConfigError
from cdc.core.exits import DEBUG_HELP, debug_flag, report
from cdc.core.settings import Settings, load_settings
from cdc.core.signals import install_signal_handlers
from cdc.core.state import shown_moment, state_tables
from sync_back.consumer import Consumer
from sync_back.grants import sync_back_grants
from sync_back.mapping import load_mappings


def consumer(settings: Settings, with_queue: bool, stop: threading.Event | None = None) -> Consumer:
    engine = database.connect(settings)
    check_migrated(settings, engine)
    mappings = load_mappings(settings.sync_back, settings.default_schema)
    sqs: SqsClient | None = None
    if with_queue:
        if not settings.sync_queue_url:
            raise ConfigError(
                "CDC_SYNC_QUEUE_URL",
                "name the SQS queue that the EventBridge rule "
                "feeds, e.g. https://sqs.eu-west-1.amazonaws.com/123456789012/sync",
            )
        if not len(mappings):
            raise ConfigError(
                "CDC_CONFIG",
                "no [[sync_back.mappings]] in the TOML file: nothing "
                "would be written, every event would be a dead letter",
            )
        import boto3

        sqs = boto3.client("sqs")
    return Consumer(
        settings,
        engine,
        state_tables(settings.dialect, settings.state_schema),
        mappings,
        sqs,
        stop or threading.Event(),
    )


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    stop = threading.Event()
    install_signal_handlers(stop)
    worker = consumer(settings, with_queue=True, stop=stop)
    server = None
    if settings.health_port is not None:
        from sync_back.health import serve_consumer

        server = serve_consumer(worker, settings.health_port)
    try:
        worker.run()
    finally:
        if server is not None:
            server.shutdown()
    return 0


def cmd_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    worker = consumer(settings, with_queue=False)
    letters = worker.dead_letters(limit=args.limit)
    if args.replay is None:
        if not letters:
            print("no dead letters")
        for letter in letters:
            print(
                f"{letter.id}\t{shown_moment(letter.created_at)}\t{letter.detail_type}\t"
                f"{letter.message_id}\t"
                f"attempts={letter.attempts}\t{letter.reason}"
            )
        return 0
    chosen = [x for x in letters if not args.replay or x.id in args.replay]
    results = worker.replay(chosen)
    failed = [m for m, outcome in results.items() if outcome == "dead_letter"]
    print(f"replayed {len(results) - len(failed)}; still dead letters {len(failed)}")
    return 1 if failed else 0


def cmd_conflicts(settings: Settings, args: argparse.Namespace) -> int:
    worker = consumer(settings, with_queue=False)
    table = worker.state.conflicts
    with worker.engine.connect() as connection:
        rows = (
            connection.execute(select(table).order_by(table.c.id).limit(args.limit))
            .mappings()
            .all()
        )
    if not rows:
        print("no parked conflicts")
    for row in rows:
        print(
            f"{row['id']}\t{shown_moment(row['created_at'])}\t{row['table_name']}\t"
            f"{row['row_key']}\t"
            f"{row['event_id']}\t{row['reason']}"
        )
    return 0


def cmd_grants(settings: Settings, args: argparse.Namespace) -> int:
    mappings = load_mappings(settings.sync_back, settings.default_schema)
    print("\n".join(sync_back_grants(settings, mappings, args.role)))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="sync-back",
        description=(
            "Write the new system's events (EventBridge rule -> SQS) into the legacy tables, "
            "exactly once, without echoing them back onto the bus."
        ),
    )
    top.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the consumer").set_defaults(func=cmd_run)
    letters = sub.add_parser("dead-letters", help="list dead letters, or apply them again")
    letters.add_argument(
        "--replay",
        nargs="*",
        type=int,
        metavar="ID",
        help="apply these again (all listed ones when no id is given)",
    )
    letters.add_argument("--limit", type=int, default=100)
    letters.set_defaults(func=cmd_dead_letters)
    conflicts = sub.add_parser("conflicts", help="list events parked by the 'park' policy")
    conflicts.add_argument("--limit", type=int, default=100)
    conflicts.set_defaults(func=cmd_conflicts)
    grants = sub.add_parser("grants", help="print least-privilege SQL for sync back's role")
    grants.add_argument("--role", default="cdc_sync_back")
    grants.set_defaults(func=cmd_grants)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    debug, arguments = debug_flag(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(arguments)
    settings: Settings | None = None
    try:
        settings = load_settings(require_tables=False)  # its tables are in its mappings
        logs.configure("DEBUG" if debug else settings.log_level, settings.log_format)
        code: int = args.func(settings, args)
        return code
    except Exception as exc:
        debug = debug or (settings is not None and settings.log_level == "DEBUG")
        status = report("sync-back", exc, settings.url if settings else None, debug)
        if status is None:
            raise  # not a failure anybody foresaw: its traceback is the report
        return status


if __name__ == "__main__":
    sys.exit(main())

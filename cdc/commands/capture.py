"""``cdc``: the operator's commands. This shell builds the settings once, wires the pieces,
and turns known errors into one clear line and an exit status."""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Engine

from cdc.app import close_worker, open_publisher, open_worker, prepare_embedded, require_postgres
from cdc.capture import deadletters, demo, progress, slots, triggers
from cdc.capture.backfill import runs
from cdc.capture.catalog import read_table
from cdc.capture.grants import capture_grants
from cdc.capture.sources.changelog import ChangeLogSource
from cdc.core import database
from cdc.core.database import check_migrated
from cdc.core.errors import CdcError, ConfigError
from cdc.core.settings import Settings
from cdc.core.state import shown_moment, state_tables
from cdc.core.tables import TableRef
from cdc.validate.grants import validator_grants

log = logging.getLogger("cdc")


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    engine = database.connect(settings)
    if args.drop:
        return remove_state(settings, engine, yes=args.yes, force=args.force)
    database.migrate(engine, settings)
    print(f"state schema is at revision {database.current_revision(engine, settings)}")
    return 0


def remove_state(settings: Settings, engine: Engine, yes: bool, force: bool) -> int:
    """``cdc migrate --drop``: remove the service's own schema. Not while capture is installed
    (without the schema, a trigger would fail the legacy application's writes, and a slot would
    keep WAL forever), unless ``force`` removes capture first; and only with ``yes``."""
    where = settings.display_url
    revision = database.current_revision(engine, settings)
    if revision is None:
        print(f"no state schema in {where}: nothing to remove")
        return 0
    if not database.knows_revision(settings, revision):
        raise CdcError(
            f"the state schema is at revision {revision}, newer than this version knows; "
            "remove it with the version that migrated it"
        )
    tables = state_tables(settings.dialect, settings.state_schema)
    triggered = triggers.installed(engine, settings.state_schema)
    slot = slots.slot_name(engine, settings.slot_name)
    replication = slots.existing(engine, slot, settings.publication_name)
    capture = [*(f"capture triggers on {name}" for name in triggered), *replication]
    if capture and not force:
        raise CdcError(
            f"capture is installed ({', '.join(capture)}); remove it first (`cdc setup --drop`, "
            "in each CDC_CAPTURE mode used), or add --force to remove it with the schema"
        )
    pending = ChangeLogSource(engine, tables, settings.default_schema).backlog().pending or 0
    if not yes:
        raise CdcError(
            f"this removes the state schema of {where} ({pending} changes not yet published, "
            f"{deadletters.count(engine, tables)} dead letters, the checkpoints, sync back's "
            "and the validator's records); run again with --yes to do it"
        )
    refs = [TableRef.parse(name, settings.default_schema) for name in triggered]
    for ref in triggers.drop(engine, refs, settings.state_schema):
        print(f"capture triggers removed from {ref.qualified}")
    if replication:
        for what in slots.drop(engine, slot, settings.publication_name):
            print(f"{what} removed")
    database.drop_state(engine, settings)
    print(f"state schema removed from {where}")
    return 0


def cmd_setup(settings: Settings, args: argparse.Namespace) -> int:
    engine = database.connect(settings)
    if args.drop and settings.capture == "logical":
        require_postgres(settings)
        slot = slots.slot_name(engine, settings.slot_name)
        wanted = [f"replication slot {slot}", f"publication {settings.publication_name}"]
        removed = slots.drop(engine, slot, settings.publication_name)
        for what in wanted:
            print(f"{what} removed" if what in removed else f"{what}: none to remove")
        return 0
    if args.drop:
        dropped = triggers.drop(engine, settings.table_refs, settings.state_schema)
        for ref in settings.table_refs:
            print(
                f"capture triggers removed from {ref.qualified}"
                if ref in dropped
                else f"{ref.qualified}: no capture triggers to remove"
            )
        return 0
    check_migrated(settings, engine)
    infos = [read_table(engine, t) for t in settings.table_refs]
    names = ", ".join(t.qualified for t in settings.table_refs)
    if settings.capture == "logical":
        require_postgres(settings)
        slot = slots.slot_name(engine, settings.slot_name)
        slots.install(engine, infos, slot, settings.publication_name)
        print(
            f"publication {settings.publication_name} publishes {names}; "
            f"replication slot {slot} is ready"
        )
        return 0
    triggers.install(engine, infos, settings.state_schema)
    print("capture triggers installed on " + names)
    return 0


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    engine = database.connect(settings)
    if settings.embedded:
        prepare_embedded(settings, engine)
    else:
        check_migrated(settings, engine)
    worker = open_worker(settings, engine)
    server = None
    if settings.health_port is not None:
        from cdc.capture.health import serve

        server = serve(worker, settings.health_port)
    try:
        worker.run()
    finally:
        if server is not None:
            server.shutdown()
        close_worker(worker)
    return 0


def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    engine = database.connect(settings)
    if settings.embedded:
        prepare_embedded(settings, engine)
    else:
        check_migrated(settings, engine)
    tables = state_tables(settings.dialect, settings.state_schema)
    if args.status:
        print_backfills(runs.latest(engine, tables))
        return 0
    if not args.tables:
        raise CdcError(
            "name the tables to backfill (cdc backfill TABLE [TABLE...]), or ask for --status"
        )
    refs = [TableRef.parse(name, settings.default_schema) for name in args.tables]
    if args.cancel:
        for ref in refs:
            count = runs.cancel(engine, tables, ref.qualified)
            print(f"{ref.qualified}: {'cancelled' if count else 'no backfill running'}")
        return 0
    if args.chunk_size < 1:
        raise CdcError(f"--chunk-size must be at least 1, not {args.chunk_size}")
    if args.rate is not None and args.rate <= 0:
        raise CdcError(f"--rate is rows per second and must be above 0, not {args.rate}")
    tracked = {ref.qualified for ref in settings.table_refs}
    started = []
    for ref in refs:
        if ref.qualified not in tracked:
            raise CdcError(
                f"{ref.qualified} is not a tracked table; backfill publishes the "
                f"tables of CDC_TABLES ({', '.join(sorted(tracked))})"
            )
        info = read_table(engine, ref)
        triggers.check_capturable(info)
        run, resumed = runs.start(engine, tables, info, args.where, args.chunk_size, args.rate)
        if resumed:
            print(
                f"backfill #{run.id} of {run.table}: resuming after {run.rows_done} of "
                f"{run.rows_total} rows"
            )
        else:
            print(f"backfill #{run.id} of {run.table}: {run.rows_total} rows to publish")
        started.append(run.id)
    if args.detach:
        print("the capture worker (cdc run) publishes them; follow with cdc backfill --status")
        return 0
    return follow_backfills(settings, engine, started)


def follow_backfills(settings: Settings, engine: Engine, ids: list[int]) -> int:
    """Run a capture worker until the backfills end (or, while another worker holds the
    lease, watch that one do them), showing their progress."""
    worker = open_worker(settings, engine)
    stop = worker.stop
    failure: list[BaseException] = []

    def work() -> None:
        try:
            worker.run()
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
            stop.set()

    thread = threading.Thread(target=work, name="capture", daemon=True)
    thread.start()
    tables = state_tables(settings.dialect, settings.state_schema)
    try:
        progress.follow(lambda: runs.by_id(engine, tables, ids), stop)
    finally:
        stop.set()
        thread.join()
        close_worker(worker)
    if failure:
        raise failure[0]
    # Read again: the worker may have finished a chunk after the last progress reading.
    unfinished = [r for r in runs.by_id(engine, tables, ids) if r.status != "done"]
    for run in unfinished:
        print(
            f"backfill #{run.id} of {run.table}: {run.status} after {run.rows_done} rows"
            + ("; run the same command again to resume" if run.status == "running" else "")
        )
    return 1 if unfinished else 0


def print_backfills(listed: Sequence[runs.Run]) -> None:
    if not listed:
        print("no backfills yet")
        return
    print(f"{'id':>5}  {'table':<28} {'status':<10} {'rows':>21}  {'done':>6}  updated")
    for run in listed:
        total = run.rows_total or 0
        share = f"{100 * run.rows_done / total:5.1f}%" if total else "     -"
        print(
            f"{run.id:>5}  {run.table:<28} {run.status:<10} "
            f"{run.rows_done:>10}/{total:<10}  {share}  {shown_moment(run.updated_at)}"
        )


def cmd_status(settings: Settings, _args: argparse.Namespace) -> int:
    engine = database.connect(settings)
    check_migrated(settings, engine)
    tables = state_tables(settings.dialect, settings.state_schema)
    with engine.connect() as connection:
        row = (
            connection.execute(
                tables.checkpoints.select().where(tables.checkpoints.c.stream == settings.capture)
            )
            .mappings()
            .first()
        )
    print(f"database:        {settings.display_url}")
    names = ", ".join(t.qualified for t in settings.table_refs)
    print(f"capture:         {settings.capture} ({names})")
    if settings.capture == "logical":
        name = slots.slot_name(engine, settings.slot_name)
        slot = slots.slot_status(engine, name)
        if not slot.exists:
            print(f"slot:            {name} does not exist (run `cdc setup`)")
        else:
            lag = (
                _seconds_since(settings.dialect.read_moment(row["updated_at"]))
                if row and slot.lag_bytes
                else 0.0
            )
            print(
                f"slot:            {name} (wal_status {slot.wal_status}, "
                f"{'active' if slot.active else 'inactive'}, confirmed {slot.confirmed_flush_lsn})"
            )
            print(
                f"lag:             {slot.lag_bytes} bytes of WAL retained, "
                f"{lag:.1f}s since the last acknowledgement"
            )
    else:
        backlog = ChangeLogSource(engine, tables, settings.default_schema).backlog()
        oldest = backlog.oldest
        lag = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        print(f"pending changes: {backlog.pending}")
        print(f"lag:             {lag:.1f}s (oldest unpublished change)")
    if row:
        print(
            f"last position:   {row['position']} ({row['published']} changes published, "
            f"last at {shown_moment(row['updated_at'])})"
        )
    else:
        print("last position:   none yet")
    print(f"dead letters:    {deadletters.count(engine, tables)}")
    for run in runs.latest(engine, tables, limit=5):
        total = f" of {run.rows_total}" if run.rows_total is not None else ""
        print(f"backfill #{run.id}:    {run.table} {run.status}, {run.rows_done}{total} rows")
    return 0


def _seconds_since(moment: datetime) -> float:
    return max(0.0, (datetime.now(UTC) - moment).total_seconds())


def cmd_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    engine = database.connect(settings)
    check_migrated(settings, engine)
    tables = state_tables(settings.dialect, settings.state_schema)
    letters = deadletters.listing(engine, tables, limit=args.limit)
    if args.resend is None:
        if not letters:
            print("no dead letters")
        for letter in letters:
            print(
                f"{letter.id}\t{shown_moment(letter.created_at)}\t{letter.table}\t"
                f"{letter.event_id}\t"
                f"{letter.entry.size} bytes\tattempts={letter.attempts}\t{letter.reason}"
            )
        return 0
    chosen = [x for x in letters if not args.resend or x.id in args.resend]
    if not chosen:
        print("nothing to resend")
        return 0
    stop = threading.Event()
    publisher = open_publisher(settings, stop)
    try:
        rejected = publisher.publish([x.entry for x in chosen])
    finally:
        publisher.close()
    rejected_ids = {r.entry.event_id for r in rejected}
    accepted = [x.entry.event_id for x in chosen if x.entry.event_id not in rejected_ids]
    deadletters.resolve(engine, tables, accepted, rejected)
    print(f"resent {len(accepted)}; still rejected {len(rejected)}")
    for rejection in rejected:
        print(f"  {rejection.entry.event_id}: {rejection.reason}")
    return 1 if rejected else 0


def cmd_grants(settings: Settings, args: argparse.Namespace) -> int:
    print(grants_sql(settings, args.capture_role, args.validator_role))
    return 0


def grants_sql(settings: Settings, capture_role: str, validator_role: str = "cdc_validator") -> str:
    """Least-privilege SQL for the capture worker's role and the validator's role; the
    sync-back role's depends on its mappings, and ``sync-back grants`` prints it."""
    return "\n".join(
        [
            *capture_grants(settings, capture_role),
            "",
            "-- Sync-back consumer: `sync-back grants` prints its role (the mapped legacy tables).",
            "",
            *validator_grants(settings, validator_role),
        ]
    )


def cmd_demo(settings: Settings, _args: argparse.Namespace) -> int:
    if not settings.embedded:
        raise ConfigError(
            "CDC_DATABASE_URL", "`cdc demo` changes the embedded demo database only; unset it"
        )
    engine = database.connect(settings)
    prepare_embedded(settings, engine)
    for line in demo.make_changes(engine):
        print(line)
    return 0

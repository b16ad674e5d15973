"""The composition root: builds the publisher, source, worker and backfiller from the one
settings object, for every entry point (commands, tests, benchmarks)."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

from cdc.bus.publishers import Publisher
from cdc.bus.publishers.file import FilePublisher, NullPublisher
from cdc.capture import demo, slots, triggers
from cdc.capture.backfill.backfiller import Backfiller
from cdc.capture.catalog import read_table
from cdc.capture.coverage import Coverage
from cdc.capture.lease import Lease
from cdc.capture.sources import Source
from cdc.capture.sources.changelog import ChangeLogSource
from cdc.capture.worker import Worker, failpoint_hook
from cdc.core import database
from cdc.core.errors import ConfigError
from cdc.core.settings import Settings
from cdc.core.signals import install_signal_handlers
from cdc.core.state import state_tables

log = logging.getLogger("cdc")


def open_publisher(settings: Settings, stop: threading.Event) -> Publisher:
    if settings.bus == "file":
        return FilePublisher(settings.bus_file, settings.event_bus_name, settings.max_entry_bytes)
    if settings.bus == "null":
        return NullPublisher()
    from cdc.bus.publishers.eventbridge import EventBridgePublisher, check_bus

    check_bus(settings.event_bus_name)
    return EventBridgePublisher.from_environment(
        settings.event_bus_name, settings.max_entry_bytes, stop, settings.publish_concurrency
    )


def open_source(settings: Settings, engine: Engine) -> Source:
    tables = state_tables(settings.dialect, settings.state_schema)
    if settings.capture == "changelog":
        return ChangeLogSource(engine, tables, settings.default_schema)
    require_postgres(settings)
    from cdc.capture.sources.logical import LogicalSource
    from cdc.core.database import conninfo_of

    return LogicalSource(
        engine,
        tables,
        conninfo_of(settings.url),
        slots.slot_name(engine, settings.slot_name),
        settings.publication_name,
        settings.default_schema,
        poll_interval=settings.poll_interval,
        heartbeat_seconds=settings.heartbeat_interval,
        tracked=frozenset(ref.qualified for ref in settings.table_refs),
    )


def open_backfiller(settings: Settings, engine: Engine, source: Source) -> Backfiller:
    return Backfiller(
        engine,
        state_tables(settings.dialect, settings.state_schema),
        settings.capture,
        source.table,
    )


def require_postgres(settings: Settings) -> None:
    if not settings.dialect.logical_replication:
        raise ConfigError("CDC_CAPTURE", "the 'logical' mode needs PostgreSQL; use 'changelog'")


def prepare_embedded(settings: Settings, engine: Engine) -> None:
    """The embedded default sets itself up: state tables, demo table, triggers, first rows."""
    database.migrate(engine, settings)
    created = demo.create_demo_table(engine)
    triggers.install(
        engine, [read_table(engine, t) for t in settings.table_refs], settings.state_schema
    )
    if created:
        demo.seed(engine)
    log.info(
        "embedded demo: legacy database %s, events in %s; run `cdc demo` to change rows",
        settings.display_url,
        settings.bus_file,
    )


def open_worker(settings: Settings, engine: Engine) -> Worker:
    """The capture worker as `cdc run` runs it: signals stop it, a lease on PostgreSQL."""
    stop = threading.Event()
    install_signal_handlers(stop)
    source = open_source(settings, engine)
    lease = Lease(engine, lease_name(settings, engine)) if settings.dialect.advisory_locks else None
    coverage = Coverage(
        engine,
        settings.table_refs,
        settings.capture,
        settings.state_schema,
        settings.publication_name,
    )
    return Worker(
        settings,
        source,
        open_publisher(settings, stop),
        stop,
        on_published=failpoint_hook(settings.failpoint),
        lease=lease,
        backfill=open_backfiller(settings, engine, source),
        coverage=coverage.gaps,
    )


def close_worker(worker: Worker) -> None:
    if worker.lease is not None:
        worker.lease.release()
    worker.publisher.close()
    worker.source.close()


def lease_name(settings: Settings, engine: Engine) -> str:
    """The lease of one source, named after its slot in ``logical`` mode; in ``changelog`` mode
    after the configured slot name or the old default (so that it is what it always was)."""
    if settings.capture == "logical":
        slot = slots.slot_name(engine, settings.slot_name)
    else:
        slot = settings.slot_name or slots.LEGACY_SLOT_NAME
    return f"cdc:{settings.state_schema}:{settings.capture}:{slot}"

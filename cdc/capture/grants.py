"""Least-privilege SQL for the capture worker's role (``cdc grants``)."""

from __future__ import annotations

from cdc.core.settings import Settings
from cdc.core.tables import quote_ident


def capture_grants(settings: Settings, role: str) -> list[str]:
    schema = quote_ident(settings.state_schema)
    tables = ", ".join(t.quoted for t in settings.table_refs)
    capture = quote_ident(role)
    lines = [
        f"-- Capture worker ({settings.capture} mode). `cdc migrate` and `cdc setup` run as the",
        "-- owner of the legacy tables (triggers and publications need it); the worker does not.",
        f"CREATE ROLE {capture} LOGIN PASSWORD 'change-me';",
        f"GRANT USAGE ON SCHEMA {schema} TO {capture};",
        f"GRANT SELECT, INSERT, UPDATE ON {schema}.checkpoints TO {capture};",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.dead_letters TO {capture};",
        f"GRANT SELECT, INSERT, UPDATE ON {schema}.backfills TO {capture};",
        f"GRANT SELECT ON {schema}.alembic_version, {schema}.table_schemas TO {capture};",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {capture};",
        f"GRANT SELECT ON {tables} TO {capture};",
    ]
    if settings.capture == "changelog":
        # INSERT: a backfill's watermarks are change-log rows
        lines.append(f"GRANT SELECT, INSERT, DELETE ON {schema}.changelog TO {capture};")
        lines.append("-- Legacy writers need nothing: the capture function runs as its owner.")
    else:
        lines.append(f"ALTER ROLE {capture} WITH REPLICATION;  -- streams the slot; nothing more")
    return lines

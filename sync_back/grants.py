"""Least-privilege SQL for the sync-back consumer's role (``sync-back grants``): its inbox and
bookkeeping, and only the legacy tables its mappings write, with only the verbs they use."""

from __future__ import annotations

from cdc.core.settings import Settings
from cdc.core.tables import quote_ident
from sync_back.mapping import Mappings


def sync_back_grants(settings: Settings, mappings: Mappings, role: str) -> list[str]:
    schema, sync = quote_ident(settings.state_schema), quote_ident(role)
    lines = [
        "-- Sync-back consumer: its inbox and bookkeeping, and only the mapped legacy tables.",
        f"CREATE ROLE {sync} LOGIN PASSWORD 'change-me';",
        f"GRANT USAGE ON SCHEMA {schema} TO {sync};",
        f"GRANT SELECT, INSERT, UPDATE ON {schema}.inbox, {schema}.conflicts TO {sync};",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.synced_rows, "
        f"{schema}.sync_dead_letters TO {sync};",
        f"GRANT SELECT ON {schema}.alembic_version TO {sync};",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {sync};",
    ]
    privileges: dict[str, set[str]] = {}
    for mapping in mappings:
        wanted = {"SELECT", "DELETE"} if mapping.op == "delete" else {"SELECT", "INSERT", "UPDATE"}
        privileges.setdefault(mapping.table.quoted, set()).update(wanted)
    for name, wanted in sorted(privileges.items()):
        lines.append(f"GRANT {', '.join(sorted(wanted))} ON {name} TO {sync};")
    if not privileges:
        lines.append("-- (no [[sync_back.mappings]] configured: no legacy table to grant)")
    return lines

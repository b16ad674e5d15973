"""Least-privilege SQL for the validator's role (``cdc grants``): its own tables only."""

from __future__ import annotations

from cdc.core.settings import Settings
from cdc.core.tables import quote_ident


def validator_grants(settings: Settings, role: str) -> list[str]:
    schema, validator = quote_ident(settings.state_schema), quote_ident(role)
    return [
        "-- Validator (cdc validate): its claims and dead letters; no legacy table at all.",
        f"CREATE ROLE {validator} LOGIN PASSWORD 'change-me';",
        f"GRANT USAGE ON SCHEMA {schema} TO {validator};",
        f"GRANT SELECT, INSERT, UPDATE ON {schema}.republished TO {validator};",
        f"GRANT SELECT, INSERT, UPDATE ON {schema}.validation_dead_letters TO {validator};",
        f"GRANT SELECT ON {schema}.alembic_version TO {validator};",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {validator};",
    ]

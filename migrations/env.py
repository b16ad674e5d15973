"""Alembic environment for the service's own schema. Run through ``cdc migrate``, which hands
over the connection and the schema name; it never reflects or touches legacy tables."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

config = context.config
connection = config.attributes["connection"]
schema: str = config.attributes["state_schema"]
sqlite = connection.dialect.name == "sqlite"

if not sqlite:
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))

context.configure(
    connection=connection,
    version_table="cdc_alembic_version" if sqlite else "alembic_version",
    version_table_schema=None if sqlite else schema,
    # Only our own tables exist in this history; autogenerate must never see legacy ones.
    include_schemas=False,
)

with context.begin_transaction():
    context.run_migrations()

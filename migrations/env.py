"""Alembic environment for the service's own schema. Run through ``cdc migrate``, which hands
over the connection and the schema name; it never reflects or touches legacy tables."""

from __future__ import annotations

from alembic import context

from cdc.core.dialects import dialect_of

config = context.config
connection = config.attributes["connection"]
schema: str = config.attributes["state_schema"]
dialect = dialect_of(connection)
dialect.create_state_schema(connection, schema)
version_table, version_table_schema = dialect.version_table(schema)

context.configure(
    connection=connection,
    version_table=version_table,
    version_table_schema=version_table_schema,
    # Only our own tables exist in this history; autogenerate must never see legacy ones.
    include_schemas=False,
)

with context.begin_transaction():
    context.run_migrations()

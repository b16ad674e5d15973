"""The capture function runs with its owner's rights: legacy application roles keep writing
their tables without any privilege on the service's schema.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import context, op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    schema: str = context.config.attributes["state_schema"]
    # A fixed search_path: a SECURITY DEFINER function must not resolve names through the
    # caller's path (the function names every table with its schema anyway).
    op.execute(
        f'ALTER FUNCTION "{schema}".capture() SECURITY DEFINER '
        "SET search_path = pg_catalog, pg_temp"
    )
    op.execute(f'REVOKE ALL ON FUNCTION "{schema}".capture() FROM PUBLIC')


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    schema: str = context.config.attributes["state_schema"]
    op.execute(f'ALTER FUNCTION "{schema}".capture() SECURITY INVOKER RESET search_path')

"""Sync-back state: the inbox (exactly-once), its dead letters, parked conflicts, synced rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _names() -> tuple[str | None, str]:
    schema: str = context.config.attributes["state_schema"]
    if op.get_bind().dialect.name == "sqlite":
        return None, "cdc_"
    return schema, ""


def upgrade() -> None:
    schema, prefix = _names()
    sqlite = schema is None
    moment = sa.Text() if sqlite else sa.DateTime(timezone=True)
    id_type = sa.Integer() if sqlite else sa.BigInteger()
    op.create_table(
        f"{prefix}inbox",
        sa.Column("event_id", sa.Text(), primary_key=True),
        sa.Column("detail_type", sa.Text(), nullable=False),
        sa.Column("table_name", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("applied_at", moment, nullable=False),
        schema=schema,
    )
    op.create_table(
        f"{prefix}sync_dead_letters",
        sa.Column("id", id_type, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.Text(), nullable=False, unique=True),
        sa.Column("detail_type", sa.Text()),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", moment, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"),
        schema=schema,
    )
    op.create_table(
        f"{prefix}conflicts",
        sa.Column("id", id_type, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.Text(), nullable=False, unique=True),
        sa.Column("table_name", sa.Text(), nullable=False),
        sa.Column("row_key", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", moment, nullable=False),
        schema=schema,
    )
    # The version sync back last wrote to each legacy row: a different version in the row
    # now means the legacy application changed it since (a conflict for legacy_wins, park).
    op.create_table(
        f"{prefix}synced_rows",
        sa.Column("table_name", sa.Text(), primary_key=True),
        sa.Column("row_key", sa.Text(), primary_key=True),
        sa.Column("version", sa.Text()),
        sa.Column("event_id", sa.Text(), nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    schema, prefix = _names()
    for name in ("synced_rows", "conflicts", "sync_dead_letters", "inbox"):
        op.drop_table(f"{prefix}{name}", schema=schema)

"""Capture state: change log, checkpoints, dead letters, and the PostgreSQL capture function.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
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
    # PostgreSQL: json (not jsonb) keeps the trigger cheap: row_to_json text is stored as is.
    image = sa.Text() if sqlite else postgresql.JSON()
    moment = sa.Text() if sqlite else sa.DateTime(timezone=True)
    id_type = sa.Integer() if sqlite else sa.BigInteger()
    op.create_table(
        f"{prefix}changelog",
        sa.Column("id", id_type, primary_key=True, autoincrement=True),
        sa.Column("table_name", sa.Text(), nullable=False),
        sa.Column("op", sa.Text(), nullable=False),
        sa.Column("before", image),
        sa.Column("after", image),
        sa.Column(
            "txid", sa.BigInteger(), server_default=None if sqlite else sa.text("txid_current()")
        ),
        sa.Column(
            "origin",
            sa.Text(),
            server_default=None if sqlite else sa.text("current_setting('cdc.origin', true)"),
        ),
        sa.Column(
            "captured_at",
            moment,
            nullable=False,
            server_default=sa.text("(strftime('%Y-%m-%dT%H:%M:%fZ','now'))")
            if sqlite
            else sa.text("clock_timestamp()"),
        ),
        schema=schema,
    )
    op.create_table(
        f"{prefix}checkpoints",
        sa.Column("stream", sa.Text(), primary_key=True),
        sa.Column("position", sa.Text(), nullable=False),
        sa.Column("published", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("updated_at", moment, nullable=False),
        schema=schema,
    )
    op.create_table(
        f"{prefix}dead_letters",
        sa.Column("id", id_type, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.Text(), nullable=False, unique=True),
        sa.Column("table_name", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.Column("created_at", moment, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"),
        schema=schema,
    )
    if sqlite:
        # SQLite has no session settings: a writer that must be recognised (sync back) puts
        # its origin here inside its transaction and removes it before commit.
        op.create_table("cdc_origin", sa.Column("origin", sa.Text(), nullable=False))
        return
    op.execute(f"""
CREATE OR REPLACE FUNCTION "{schema}".capture() RETURNS trigger
LANGUAGE plpgsql AS $capture$
BEGIN
    -- One change-log row per row change; txid, origin and captured_at come from the
    -- column defaults (txid_current(), the cdc.origin session setting, clock_timestamp()).
    IF TG_OP = 'INSERT' THEN
        INSERT INTO "{schema}".changelog (table_name, op, after)
        VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, 'insert', row_to_json(NEW));
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO "{schema}".changelog (table_name, op, before, after)
        VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, 'update', row_to_json(OLD), row_to_json(NEW));
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO "{schema}".changelog (table_name, op, before)
        VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, 'delete', row_to_json(OLD));
    ELSE
        INSERT INTO "{schema}".changelog (table_name, op)
        VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, 'truncate');
    END IF;
    RETURN NULL;
END
$capture$""")


def downgrade() -> None:
    schema, prefix = _names()
    if schema is not None:
        op.execute(f'DROP FUNCTION IF EXISTS "{schema}".capture() CASCADE')
    else:
        op.drop_table("cdc_origin")
    for name in ("dead_letters", "checkpoints", "changelog"):
        op.drop_table(f"{prefix}{name}", schema=schema)

"""Validation state: the events the validator republished (claimed once each), and its dead
letters with every validation error.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0005"
down_revision = "0004"
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
    # One row per event ever claimed for republishing; the primary key lets one claim win, so
    # no event goes to the central bus twice (see cdc/validation_state.py).
    op.create_table(
        f"{prefix}republished",
        sa.Column("source", sa.Text(), primary_key=True),
        sa.Column("event_id", sa.Text(), primary_key=True),
        sa.Column("detail_type", sa.Text(), nullable=False),
        # claimed (outcome not known yet, or in doubt after a crash) -> published | rejected
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("claim", sa.Text(), nullable=False),
        sa.Column("message_id", sa.Text()),
        sa.Column("entry", sa.Text()),  # kept while claimed, for an operator's resend
        sa.Column("claimed_at", moment, nullable=False),
        sa.Column("settled_at", moment),
        schema=schema,
    )
    op.create_index(
        f"{prefix}republished_claimed",
        f"{prefix}republished",
        ["claimed_at"],
        schema=schema,
        **{f"{'sqlite' if sqlite else 'postgresql'}_where": sa.text("status = 'claimed'")},
    )
    op.create_table(
        f"{prefix}validation_dead_letters",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.Text(), nullable=False, unique=True),
        sa.Column("event_id", sa.Text()),
        sa.Column("source", sa.Text()),
        sa.Column("detail_type", sa.Text()),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("errors", sa.Text(), nullable=False),  # JSON list of every error
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", moment, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"),
        schema=schema,
    )


def downgrade() -> None:
    schema, prefix = _names()
    op.drop_table(f"{prefix}validation_dead_letters", schema=schema)
    op.drop_table(f"{prefix}republished", schema=schema)

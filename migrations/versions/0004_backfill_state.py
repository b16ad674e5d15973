"""Backfill state: one row per backfill run of a table, with its progress per chunk.

And on SQLite, the change log's ids become AUTOINCREMENT: a plain INTEGER PRIMARY KEY hands
out max(id) + 1, so once the worker had emptied the log, ids (and so positions) started again
from 1, behind positions already published. Ids now never go back, which backfill's
watermarks rely on too.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0004"
down_revision = "0003"
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
        f"{prefix}backfills",
        sa.Column("id", id_type, primary_key=True, autoincrement=True),
        sa.Column("table_name", sa.Text(), nullable=False),
        sa.Column("where_clause", sa.Text()),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("rate", sa.Float()),  # rows per second at most; NULL: as fast as it goes
        # running -> done, or cancelled by an operator
        sa.Column("status", sa.Text(), nullable=False),
        # JSON list of the last key the bus accepted (keyset position); NULL before the first
        sa.Column("last_key", sa.Text()),
        sa.Column("rows_total", sa.BigInteger()),
        sa.Column("rows_done", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("chunks_done", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("started_at", moment, nullable=False),
        sa.Column("updated_at", moment, nullable=False),
        sa.Column("finished_at", moment),
        schema=schema,
    )
    op.create_index(
        f"{prefix}backfills_running",
        f"{prefix}backfills",
        ["table_name"],
        unique=True,
        schema=schema,
        **{f"{'sqlite' if sqlite else 'postgresql'}_where": sa.text("status = 'running'")},
    )
    if sqlite:
        _sqlite_changelog_autoincrement()


def _sqlite_changelog_autoincrement() -> None:
    op.execute("""CREATE TABLE cdc_changelog_next (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        table_name TEXT NOT NULL,
        op TEXT NOT NULL,
        "before" TEXT,
        "after" TEXT,
        txid BIGINT,
        origin TEXT,
        captured_at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')) NOT NULL)""")
    op.execute(
        'INSERT INTO cdc_changelog_next SELECT id, table_name, op, "before", "after", '
        "txid, origin, captured_at FROM cdc_changelog"
    )
    op.execute("DROP TABLE cdc_changelog")
    # Legacy rename: the capture triggers name cdc_changelog and must keep doing so.
    op.execute("PRAGMA legacy_alter_table = ON")
    op.execute("ALTER TABLE cdc_changelog_next RENAME TO cdc_changelog")
    op.execute("PRAGMA legacy_alter_table = OFF")
    # Ids continue past every position published so far, also when the log is empty now.
    op.execute("DELETE FROM sqlite_sequence WHERE name = 'cdc_changelog'")
    op.execute("""INSERT INTO sqlite_sequence (name, seq)
        SELECT 'cdc_changelog', max(coalesce((SELECT max(id) FROM cdc_changelog), 0),
                                    coalesce((SELECT max(CAST(position AS INTEGER))
                                              FROM cdc_checkpoints
                                              WHERE stream = 'changelog'), 0))""")


def downgrade() -> None:
    schema, prefix = _names()
    op.drop_table(f"{prefix}backfills", schema=schema)

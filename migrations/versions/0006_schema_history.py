"""Schema history: every shape a captured table has had (columns, types, key), numbered, with
the stream position from which it holds. Values are converted by the shape in effect at a
change's position, and each new shape is published as a ``schema`` event.

On PostgreSQL an event trigger (installed by ``cdc setup``: it needs a superuser) calls
``capture_ddl()`` at the end of every ALTER TABLE; for a captured table whose shape changed it
writes the new version here and a ``schema`` row into the change log, both in the DDL's own
transaction. ALTER TABLE holds an ACCESS EXCLUSIVE lock until it commits, so every row change
written under the old shape has a lower change-log id than that row, and every change under
the new shape a higher one.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0006"
down_revision = "0005"
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
    op.create_table(
        f"{prefix}table_schemas",
        sa.Column("table_name", sa.Text(), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        # from this stream position on (text that sorts like the positions of the stream)
        sa.Column("position", sa.Text(), nullable=False),
        # {"columns": [{"name", "type", "nullable"}], "key": [...]}
        sa.Column("shape", sa.Text(), nullable=False),
        sa.Column("recorded_at", moment, nullable=False),
        schema=schema,
    )
    if sqlite:
        return
    # The shape of a table as capture converts it: a domain column by its base type (its values
    # are written as the base type's), the key from the replica identity index (what logical
    # replication sends as a row's old key), else from the primary key.
    op.execute(f"""
CREATE FUNCTION "{schema}".table_shape(rel regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $shape$
SELECT json_build_object(
    'columns', coalesce((
        SELECT json_agg(json_build_object(
            'name', a.attname,
            'type', CASE WHEN t.typtype = 'd'
                         THEN format_type(t.typbasetype, t.typtypmod)
                         ELSE format_type(a.atttypid, a.atttypmod) END,
            'nullable', NOT a.attnotnull) ORDER BY a.attnum)
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped), '[]'::json),
    'key', coalesce((
        SELECT json_agg(a.attname ORDER BY k.ord)
        FROM (SELECT i.indkey FROM pg_index i
              WHERE i.indrelid = rel AND (i.indisprimary OR i.indisreplident)
              ORDER BY i.indisreplident DESC, i.indisprimary DESC LIMIT 1) AS ix,
             unnest(ix.indkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = rel AND a.attnum = k.attnum), '[]'::json)
)::text
$shape$""")
    op.execute(f"""
CREATE FUNCTION "{schema}".capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $ddl$
DECLARE
    rel oid;
    name text;
    shape text;
    last_version integer;
    last_shape text;
    log_id bigint;
BEGIN
    FOR rel IN
        SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
        WHERE classid = 'pg_class'::regclass AND object_type IN ('table', 'table column')
    LOOP
        -- Captured tables only: those carrying the capture trigger.
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM pg_trigger
            WHERE tgrelid = rel AND tgfoid = '"{schema}".capture()'::regprocedure);
        SELECT n.nspname || '.' || c.relname INTO name
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel;
        shape := "{schema}".table_shape(rel);
        SELECT s.version, s.shape INTO last_version, last_shape FROM "{schema}".table_schemas s
        WHERE s.table_name = name ORDER BY s.version DESC LIMIT 1;
        CONTINUE WHEN last_shape IS NOT NULL AND last_shape::jsonb = shape::jsonb;
        log_id := nextval(pg_get_serial_sequence('"{schema}".changelog', 'id'));
        INSERT INTO "{schema}".table_schemas (table_name, version, position, shape, recorded_at)
        VALUES (name, coalesce(last_version, 0) + 1, lpad(log_id::text, 20, '0'), shape,
                clock_timestamp());
        INSERT INTO "{schema}".changelog (id, table_name, op, before, after)
        VALUES (log_id, name, 'schema', last_shape::json,
                json_build_object('version', coalesce(last_version, 0) + 1,
                                  'shape', shape::json));
    END LOOP;
END
$ddl$""")
    op.execute(f'REVOKE ALL ON FUNCTION "{schema}".capture_ddl() FROM PUBLIC')


def downgrade() -> None:
    schema, prefix = _names()
    if schema is not None:
        op.execute(f'DROP EVENT TRIGGER IF EXISTS "{schema}_capture_ddl"')
        op.execute(f'DROP FUNCTION IF EXISTS "{schema}".capture_ddl()')
        op.execute(f'DROP FUNCTION IF EXISTS "{schema}".table_shape(regclass)')
    op.drop_table(f"{prefix}table_schemas", schema=schema)

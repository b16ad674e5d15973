"""The dialect objects: one contract, run against every database the service supports; and the
dead-letter store that capture, sync back and the validator share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy import types as sqltypes
from sqlalchemy.engine import make_url

from cdc.core.deadletters import DeadLetterStore
from cdc.core.dialects import DIALECTS, POSTGRESQL, SQLITE, Dialect, dialect_of
from cdc.core.state import StateTables, state_tables


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
class TestDialectContract:
    def test_now_is_read_back_as_the_moment_it_was(self, dialect: Dialect) -> None:
        before = datetime.now(UTC)
        moment = dialect.read_moment(dialect.now())
        assert moment.tzinfo is not None
        assert before - timedelta(seconds=1) <= moment <= datetime.now(UTC)

    def test_a_stored_moment_keeps_the_microsecond(self, dialect: Dialect) -> None:
        moment = datetime(2026, 11, 28, 17, 45, 52, 120, tzinfo=UTC)
        assert dialect.read_moment(dialect.stored_moment(moment)) == moment

    def test_state_tables_sit_where_the_layout_says(self, dialect: Dialect) -> None:
        layout = dialect.state_layout("cdc")
        tables = state_tables(dialect, "cdc")
        assert tables.schema == layout.schema
        assert tables.changelog.name == layout.name("changelog")
        assert tables.validation_dead_letters.name == f"{layout.prefix}validation_dead_letters"
        assert (tables.origin is not None) == layout.origin_table
        assert dialect.version_table("cdc") == (f"{layout.prefix}alembic_version", layout.schema)

    def test_legacy_tables_of_the_default_schema_reflect(self, dialect: Dialect) -> None:
        assert dialect.reflection_schema("other") == "other"
        assert dialect.reflection_schema(dialect.default_schema) in (None, dialect.default_schema)

    def test_an_insert_resolves_conflicts_in_the_dialect_s_sql(self, dialect: Dialect) -> None:
        table = state_tables(dialect).dead_letters
        statement = dialect.insert(table).values(event_id="e", table_name="t")
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.event_id], set_={"reason": statement.excluded.reason}
        )
        engine = create_engine(dialect.normalized_url(make_url(dialect.url_scheme)))
        sql = str(statement.compile(dialect=engine.dialect))
        assert "ON CONFLICT (event_id) DO UPDATE SET reason = excluded.reason" in sql

    def test_its_urls_find_it(self, dialect: Dialect) -> None:
        url = make_url(dialect.url_example)
        assert dialect_of(url) is dialect
        assert dialect_of(dialect.normalized_url(url)) is dialect


def test_a_database_not_supported_is_named_with_those_that_are() -> None:
    with pytest.raises(ValueError, match="'mysql' database is not supported; use a post"):
        dialect_of(make_url("mysql://u@h/db"))
    assert dialect_of(make_url("postgres://u@h/db")) is POSTGRESQL


def test_sqlite_moments_are_text_that_sorts_in_time_order() -> None:
    early = datetime(2026, 11, 28, 17, 45, 52, tzinfo=UTC)
    late = early + timedelta(microseconds=1)
    assert SQLITE.stored_moment(early) == "2026-11-28T17:45:52.000000Z"
    assert str(SQLITE.stored_moment(early)) < str(SQLITE.stored_moment(late))
    assert POSTGRESQL.stored_moment(early) is early


def test_types_as_the_schema_history_records_them() -> None:
    assert isinstance(POSTGRESQL.type_from_text("numeric(30,10)"), sqltypes.Numeric)
    assert isinstance(POSTGRESQL.type_from_text("text[]"), sqltypes.ARRAY)
    assert isinstance(SQLITE.type_from_text("VARCHAR(20)"), sqltypes.Text)
    assert isinstance(SQLITE.type_from_text("DECIMAL(10,2)"), sqltypes.Numeric)


def test_the_sqlite_origin_is_a_row_only_inside_the_block() -> None:
    engine = _sqlite_state()
    with engine.begin() as connection:
        with SQLITE.origin_tag(connection, "sync_back"):
            inside = connection.execute(text("SELECT origin FROM cdc_origin")).scalars().all()
        after = connection.execute(text("SELECT origin FROM cdc_origin")).scalars().all()
    assert (inside, after) == (["sync_back"], [])


# -- the dead-letter store, per table that uses it ----------------------------------------------

STORES: dict[str, tuple[str, str, tuple[str, ...], dict[str, Any]]] = {
    "capture": (
        "dead_letters",
        "event_id",
        ("reason",),
        {"event_id": "e1", "table_name": "public.t", "reason": "too big", "entry": "{}"},
    ),
    "sync back": (
        "sync_dead_letters",
        "message_id",
        ("reason",),
        {"message_id": "m1", "detail_type": "Order", "reason": "no mapping", "body": "{}"},
    ),
    "validator": (
        "validation_dead_letters",
        "message_id",
        ("reason", "errors"),
        {"message_id": "m1", "reason": "invalid", "errors": "[]", "body": "{}"},
    ),
}


def _sqlite_state() -> Engine:
    engine = create_engine("sqlite://")
    state_tables(SQLITE).metadata.create_all(engine)
    return engine


def _store(tables: StateTables, name: str) -> DeadLetterStore:
    table, key, refreshed, _ = STORES[name]
    return DeadLetterStore(getattr(tables, table), key, refreshed)


@pytest.mark.parametrize("name", STORES)
def test_a_letter_stored_again_is_one_row_with_its_new_reason_and_an_attempt_more(
    name: str,
) -> None:
    engine = _sqlite_state()
    store = _store(state_tables(SQLITE), name)
    letter = STORES[name][3]
    with engine.begin() as connection:
        store.store(connection, [letter])
        store.store(connection, [{**letter, "reason": "still"}])
    with engine.connect() as connection:
        [row] = store.listing(connection)
        assert store.count(connection) == 1
    assert (row["reason"], row["attempts"]) == ("still", 2)
    assert str(row["created_at"]).endswith("Z")


@pytest.mark.parametrize("name", STORES)
def test_letters_that_went_through_leave_and_those_refused_count_an_attempt(name: str) -> None:
    engine = _sqlite_state()
    store = _store(state_tables(SQLITE), name)
    key = STORES[name][1]
    first = STORES[name][3]
    second = {**first, key: "2"}
    with engine.begin() as connection:
        store.store(connection, [first, second])
        store.remove(connection, [first[key]])
        store.failed_again(connection, "2", "refused again")
        store.remove(connection, [])
    with engine.connect() as connection:
        rows = connection.execute(select(store.table)).mappings().all()
    assert [(r[key], r["reason"], r["attempts"]) for r in rows] == [("2", "refused again", 2)]

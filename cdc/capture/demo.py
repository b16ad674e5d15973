"""The embedded default: a SQLite legacy database with one demo table, so a newcomer sees real
changes become events without configuring anything."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from sqlalchemy import Engine, inspect, text

DEMO_ROWS = [("sprocket", "4.99"), ("flange", "12.50"), ("gasket", "0.35")]


def create_demo_table(engine: Engine) -> bool:
    """Create the demo table when absent; True when it was created (and needs seeding)."""
    if inspect(engine).has_table("widgets"):
        return False
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE widgets (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "price NUMERIC, updated_at TIMESTAMP)"
            )
        )
    return True


def seed(engine: Engine) -> None:
    with engine.begin() as connection:
        for name, price in DEMO_ROWS:
            connection.execute(
                text("INSERT INTO widgets (name, price, updated_at) VALUES (:n, :p, :t)"),
                {"n": name, "p": price, "t": _now()},
            )


def make_changes(engine: Engine) -> list[str]:
    """One insert, one update and one delete on the demo table; what was done, for the user."""
    done = []
    with engine.begin() as connection:
        name = f"widget-{random.randint(1000, 9999)}"
        row_id = connection.execute(
            text("INSERT INTO widgets (name, price, updated_at) VALUES (:n, :p, :t) RETURNING id"),
            {"n": name, "p": "9.99", "t": _now()},
        ).scalar_one()
        done.append(f"inserted widget {row_id} ({name})")
        connection.execute(
            text("UPDATE widgets SET price = :p, updated_at = :t WHERE id = :i"),
            {"p": "10.49", "t": _now(), "i": row_id},
        )
        done.append(f"updated widget {row_id}: price 9.99 -> 10.49")
        oldest = connection.execute(text("SELECT min(id) FROM widgets")).scalar_one()
        if oldest is not None and oldest != row_id:
            connection.execute(text("DELETE FROM widgets WHERE id = :i"), {"i": oldest})
            done.append(f"deleted widget {oldest}")
    return done


def _now() -> str:
    return datetime.now(UTC).isoformat()

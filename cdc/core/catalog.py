"""What the database says of a legacy table: its columns (names, types, nullability, in order)
and its primary key. Capture builds its converters on it, validation its JSON Schemas."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, inspect
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.exc import NoSuchTableError

from cdc.core.errors import SetupError
from cdc.core.tables import TableRef


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: sqltypes.TypeEngine[Any]
    nullable: bool = True


@dataclass(frozen=True, slots=True)
class TableShape:
    """A table's columns (in order) and primary key."""

    ref: TableRef
    columns: tuple[Column, ...]
    key: tuple[str, ...]

    @property
    def types(self) -> dict[str, sqltypes.TypeEngine[Any]]:
        return {column.name: column.type for column in self.columns}


def reflect(engine: Engine, ref: TableRef) -> TableShape:
    """The table as the database describes it now; a missing table is a ``SetupError`` that
    names CDC_TABLES."""
    inspector = inspect(engine)
    schema = None if engine.dialect.name == "sqlite" and ref.schema == "main" else ref.schema
    try:
        columns = inspector.get_columns(ref.name, schema=schema)
    except NoSuchTableError:
        raise SetupError(
            f"table {ref.qualified} does not exist; check CDC_TABLES (names are schema.table)"
        ) from None
    if not columns:
        raise SetupError(f"table {ref.qualified} does not exist; check CDC_TABLES")
    key = inspector.get_pk_constraint(ref.name, schema=schema).get("constrained_columns") or ()
    return TableShape(
        ref,
        tuple(Column(c["name"], c["type"], bool(c.get("nullable", True))) for c in columns),
        tuple(key),
    )


# format_type()'s text: "numeric(30,10)", "timestamp(3) with time zone", "text[]", ...
_TYPE_ARGS = re.compile(r"\(([^)]*)\)")


def pg_type_from_text(text: str) -> sqltypes.TypeEngine[Any]:
    """The SQLAlchemy type of a PostgreSQL ``format_type()`` text, as far as capture's value
    conversion tells types apart; a name it does not know (an enum, a composite) is NullType."""
    text = text.strip()
    dimensions = 0
    while text.endswith("[]"):
        text, dimensions = text[:-2], dimensions + 1
    found = _TYPE_ARGS.search(text)
    args = [int(a) for a in found[1].split(",") if a.strip().isdigit()] if found else []
    base = " ".join(_TYPE_ARGS.sub("", text).lower().split())
    element: sqltypes.TypeEngine[Any]
    if base == "numeric":
        element = postgresql.NUMERIC(args[0], args[1]) if len(args) == 2 else postgresql.NUMERIC()
    elif base in ("timestamp with time zone", "timestamp without time zone"):
        element = postgresql.TIMESTAMP(timezone=base.endswith("with time zone"))
    else:
        kind = ischema_names.get(base)
        element = kind() if kind is not None else sqltypes.NullType()
    return postgresql.ARRAY(element, dimensions=dimensions) if dimensions else element


def shape_from_json(ref: TableRef, shape: Mapping[str, Any], dialect: str) -> TableShape:
    """A shape as the schema history records it: ``{"columns": [{"name", "type", "nullable"}],
    "key": [...]}`` with PostgreSQL's type names (SQLite's declared types are kept as text)."""
    columns = tuple(
        Column(
            c["name"],
            pg_type_from_text(c["type"]) if dialect == "postgresql" else sqlite_type(c["type"]),
            bool(c.get("nullable", True)),
        )
        for c in shape["columns"]
    )
    return TableShape(ref, columns, tuple(shape["key"]))


def sqlite_type(declared: str) -> sqltypes.TypeEngine[Any]:
    """SQLite's type affinity rules, as far as conversion tells types apart: NUMERIC/DECIMAL
    columns are exact numbers, everything else keeps its value."""
    upper = declared.upper()
    if "INT" in upper:
        return sqltypes.Integer()
    if any(word in upper for word in ("CHAR", "CLOB", "TEXT")):
        return sqltypes.Text()
    if "BLOB" in upper or not upper:
        return sqltypes.LargeBinary()
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return sqltypes.Float()
    return sqltypes.Numeric()

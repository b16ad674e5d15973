"""What the database says of a legacy table: its columns (names, types, nullability, in order)
and its primary key. Capture builds its converters on it, validation its JSON Schemas."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, inspect
from sqlalchemy import types as sqltypes
from sqlalchemy.exc import NoSuchTableError

from cdc.core.dialects import Dialect, dialect_of
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
    schema = dialect_of(engine).reflection_schema(ref.schema)
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


def shape_from_json(ref: TableRef, shape: Mapping[str, Any], dialect: Dialect) -> TableShape:
    """A shape as the schema history records it: ``{"columns": [{"name", "type", "nullable"}],
    "key": [...]}``, each type as the database names it (``Dialect.type_from_text``)."""
    columns = tuple(
        Column(c["name"], dialect.type_from_text(c["type"]), bool(c.get("nullable", True)))
        for c in shape["columns"]
    )
    return TableShape(ref, columns, tuple(shape["key"]))

"""What the worker needs to know of a legacy table: its columns' types and its primary key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, inspect
from sqlalchemy import types as sqltypes
from sqlalchemy.exc import NoSuchTableError

from cdc.errors import SetupError
from cdc.events import TableRef
from cdc.values import RowConvert, row_converter


@dataclass(frozen=True)
class TableInfo:
    ref: TableRef
    columns: dict[str, sqltypes.TypeEngine[Any]]
    key: tuple[str, ...]
    convert: RowConvert


def read_table(engine: Engine, ref: TableRef) -> TableInfo:
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
    key = tuple(inspector.get_pk_constraint(ref.name, schema=schema).get("constrained_columns") or ())
    types = {column["name"]: column["type"] for column in columns}
    return TableInfo(ref, types, key, row_converter(types, engine.dialect.name))

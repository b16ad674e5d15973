"""What the worker needs to know of a legacy table: its columns' types and its primary key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy import types as sqltypes

from cdc.bus.jsontext import json_object
from cdc.capture.dialects import capture_of
from cdc.capture.values import RowConvert, row_converters
from cdc.core.catalog import TableShape, reflect
from cdc.core.dialects import Dialect, dialect_of
from cdc.core.tables import TableRef


@dataclass(frozen=True)
class TableInfo:
    ref: TableRef
    columns: dict[str, sqltypes.TypeEngine[Any]]
    key: tuple[str, ...]
    convert: RowConvert
    # Parses a row image as the triggers wrote it (JSON text) for ``convert``.
    parse: Callable[[str], dict[str, Any]] = json_object
    # ``convert`` without its check for columns the catalog does not know, for images whose
    # keys the caller checked (None: use ``convert``).
    convert_known: RowConvert | None = None
    # The table's schema version (cdc.capture.history): 1 until its shape first changes.
    version: int = 1


def _fast_parse(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:  # an integer past 64 bits, for one: the exact parser
        return json_object(text)
    if not isinstance(value, dict):
        raise ValueError("row image is not a JSON object")
    return value


def read_table(engine: Engine, ref: TableRef) -> TableInfo:
    return table_info(reflect(engine, ref), dialect_of(engine))


def table_info(shape: TableShape, dialect: Dialect, version: int = 1) -> TableInfo:
    types = shape.types
    rules = capture_of(dialect)
    # orjson parses an image about four times faster than the json module, but into doubles:
    # taken only where the database says its values survive that (see cdc.capture.values).
    fast = rules.parses_into_doubles(types)
    convert, convert_known = row_converters(types, rules, numerics_as_doubles=fast)
    return TableInfo(
        shape.ref,
        types,
        shape.key,
        convert,
        _fast_parse if fast else json_object,
        convert_known,
        version,
    )


class Catalog:
    """The tables a source has met, read from the database once each and again on demand
    (a schema change): both sources keep one."""

    def __init__(self, engine: Engine, default_schema: str) -> None:
        self.engine = engine
        self.default_schema = default_schema
        self._tables: dict[str, TableInfo] = {}

    def table(self, name: str) -> TableInfo:
        info = self._tables.get(name)
        if info is None:
            info = read_table(self.engine, TableRef.parse(name, self.default_schema))
            self._tables[name] = info
        return info

    def forget(self, name: str) -> None:
        self._tables.pop(name, None)

"""JSON Schemas of event Details, one per ``DetailType``: generated from a tracked table's
columns, or written by hand for the new system's events, and checked by the validator
(``cdc.validate.registry``).

A generated schema describes the Detail exactly as the capture renders it
(``cdc.capture.values`` for trigger mode, ``cdc.capture.pgtypes`` for logical mode, which
agree): exact numerics are strings with the declared scale, floats are numbers (or the words
NaN/Infinity), ``timestamptz`` is ISO 8601 in UTC with six fraction digits and ``Z``,
``timestamp`` has no zone, ``bytea`` is base64, ``uuid`` text, ``json``/``jsonb`` any JSON,
arrays lists (of lists, for more dimensions). Row images must carry the key columns and no
column the table did not have when the schema was generated (a new column is a contract change:
regenerate or edit the schema); other columns may be missing, as logical mode leaves out
unchanged TOASTed values and sends only the key as a delete's ``before``.

``write_schemas`` writes a file per DetailType for ``cdc.validate.registry`` to load;
everything else here is pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql

from cdc.bus.events import SCHEMA_VERSION, Op, render_detail_type
from cdc.core.catalog import TableShape
from cdc.core.dialects import Dialect

JsonSchema = dict[str, Any]
DRAFT = "https://json-schema.org/draft/2020-12/schema"
OPS: tuple[Op, ...] = ("insert", "update", "delete", "read", "truncate", "schema")

# Forms of the values as the capture renders them (cdc.capture.values and cdc.capture.pgtypes).
_UTC_TIMESTAMP = (
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"
    # Moments Python cannot hold in UTC (BC, past 9999, the edges of year 1 and 9999) keep
    # PostgreSQL's own text, with its offset
    r"|\d{4,}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d(:\d\d){0,2} BC"
    r"|(\d{5,}|0001|9999)-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d(:\d\d){0,2}"
    r"|-?infinity)$"
)
_COMMIT_TIME = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"  # cdc.bus.events.iso_utc
_LOCAL_TIMESTAMP = r"^(\d{4,}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?( BC)?|-?infinity)$"
_DATE = r"^(\d{4,}-\d\d-\d\d( BC)?|-?infinity)$"
_BASE64 = r"^[A-Za-z0-9+/]*={0,2}$"
_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_ANY_NUMERIC = r"^(-?\d+(\.\d+)?|NaN|-?Infinity)$"
_FLOAT_WORDS = ["NaN", "Infinity", "-Infinity"]
# PostgreSQL types whose values travel as their text output.
_TEXT_TYPES: tuple[type[sqltypes.TypeEngine[Any]], ...] = (
    sqltypes.Time,
    sqltypes.Interval,
    postgresql.INTERVAL,
    postgresql.MONEY,
    postgresql.OID,
    postgresql.INET,
    postgresql.CIDR,
    postgresql.MACADDR,
    postgresql.MACADDR8,
    postgresql.BIT,
    postgresql.TSVECTOR,
    postgresql.REGCLASS,
)


def value_schema(column_type: sqltypes.TypeEngine[Any], dialect: Dialect) -> JsonSchema:
    """The JSON Schema of one non-null column value, as the capture renders it."""
    if isinstance(column_type, sqltypes.ARRAY):
        return {
            "type": "array",
            "items": {
                "anyOf": [
                    value_schema(column_type.item_type, dialect),
                    {"type": "null"},
                    {"$ref": "#/$defs/nested_array"},
                ]
            },
        }
    if not dialect.strict_types:
        return _loose_value_schema(column_type)
    if isinstance(column_type, sqltypes.Boolean):
        return {"type": "boolean"}
    if isinstance(column_type, sqltypes.Integer):
        return {"type": "integer"}
    if isinstance(column_type, sqltypes.Float):  # before Numeric: Float is a Numeric
        return {"anyOf": [{"type": "number"}, {"enum": _FLOAT_WORDS}]}
    if isinstance(column_type, sqltypes.Numeric):
        return {
            "type": "string",
            "pattern": numeric_pattern(column_type.precision, column_type.scale),
        }
    if isinstance(column_type, sqltypes.DateTime):
        return {
            "type": "string",
            "pattern": _UTC_TIMESTAMP if column_type.timezone else _LOCAL_TIMESTAMP,
        }
    if isinstance(column_type, sqltypes.Date):
        return {"type": "string", "pattern": _DATE}
    if isinstance(column_type, sqltypes.LargeBinary | postgresql.BYTEA):
        return {"type": "string", "contentEncoding": "base64", "pattern": _BASE64}
    if isinstance(column_type, sqltypes.Uuid):
        return {"type": "string", "pattern": _UUID}
    if isinstance(column_type, sqltypes.JSON):
        return {}  # embedded as it is: any JSON value
    if isinstance(column_type, sqltypes.Enum):  # before String: Enum is a String
        return {"type": "string", "enum": list(column_type.enums)}
    if isinstance(column_type, sqltypes.String):
        length = column_type.length
        return {"type": "string", "maxLength": length} if length else {"type": "string"}
    if isinstance(column_type, _TEXT_TYPES):
        return {"type": "string"}
    return {}  # domains, composites, extension types: not described, anything passes


def _loose_value_schema(column_type: sqltypes.TypeEngine[Any]) -> JsonSchema:
    # A column that keeps whatever a row was given, whatever its declared type (SQLite): only
    # what the capture always produces from it is pinned down.
    if isinstance(column_type, sqltypes.Numeric) and not isinstance(column_type, sqltypes.Float):
        return {"type": "string"}
    if isinstance(column_type, sqltypes.LargeBinary):
        return {"type": "string", "contentEncoding": "base64", "pattern": _BASE64}
    if isinstance(column_type, sqltypes.Integer):
        return {"type": "integer"}
    if isinstance(column_type, sqltypes.Float):
        return {"type": "number"}
    if isinstance(column_type, sqltypes.String):
        return {"type": "string"}
    return {}


def numeric_pattern(precision: int | None, scale: int | None) -> str:
    """The text of a ``numeric(precision, scale)`` value: at most ``precision - scale`` digits
    before the point and exactly ``scale`` after, as PostgreSQL writes it (NaN is allowed in a
    constrained numeric, Infinity is not)."""
    if precision is None:
        return _ANY_NUMERIC
    scale = scale or 0
    whole = precision - scale
    integer = r"0" if whole <= 0 else rf"\d{{1,{whole}}}"
    fraction = rf"\.\d{{{scale}}}" if scale > 0 else ""
    return rf"^(-?{integer}{fraction}|NaN)$"


def row_schema(shape: TableShape, dialect: Dialect) -> JsonSchema:
    properties: dict[str, JsonSchema] = {}
    for column in shape.columns:
        value = value_schema(column.type, dialect)
        if column.nullable and column.name not in shape.key and value:
            alternatives = value["anyOf"] if list(value) == ["anyOf"] else [value]
            value = {"anyOf": [*alternatives, {"type": "null"}]}
        properties[column.name] = value
    return {
        "type": "object",
        "properties": properties,
        "required": list(shape.key),
        "additionalProperties": False,
    }


def _op_rules(op: Op) -> dict[str, JsonSchema]:
    """What a Detail of this op holds in ``key``, ``before`` and ``after``."""
    row: JsonSchema = {"$ref": "#/$defs/row"}
    null: JsonSchema = {"const": None}  # its error does not quote the whole row
    if op in ("insert", "read"):
        return {"key": {"$ref": "#/$defs/key"}, "before": null, "after": row}
    if op == "update":  # logical mode sends no old row without REPLICA IDENTITY FULL
        return {
            "key": {"$ref": "#/$defs/key"},
            "before": {"anyOf": [row, {"type": "null"}]},
            "after": row,
        }
    if op == "delete":  # logical mode: only the key columns without REPLICA IDENTITY FULL
        return {"key": {"$ref": "#/$defs/key"}, "before": row, "after": null}
    if op == "schema":  # the table's shape before (null: not recorded) and after a DDL
        shape: JsonSchema = {"$ref": "#/$defs/shape"}
        return {"key": null, "before": {"anyOf": [shape, {"type": "null"}]}, "after": shape}
    return {"key": null, "before": null, "after": null}  # truncate


# A ``schema`` event's before and after: the table's columns in order, and its key.
_SHAPE: JsonSchema = {
    "type": "object",
    "required": ["columns", "key"],
    "properties": {
        "columns": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "type", "nullable"],
                "properties": {
                    "name": {"type": "string"},
                    "type": {"type": "string"},
                    "nullable": {"type": "boolean"},
                },
                "additionalProperties": False,
            },
        },
        "key": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}


def detail_schema(
    shape: TableShape, detail_type: str, ops: Sequence[Op], source: str, dialect: Dialect
) -> JsonSchema:
    """The schema of the Details of ``detail_type``: the events of ``ops`` on one table."""
    row = row_schema(shape, dialect)
    key_properties = {
        name: row["properties"][name] for name in shape.key if name in row["properties"]
    }
    properties: dict[str, JsonSchema] = {
        "id": {"type": "string", "minLength": 1},
        "op": {"const": ops[0]} if len(ops) == 1 else {"enum": list(ops)},
        "table": {"const": shape.ref.qualified},
        "key": {"anyOf": [{"$ref": "#/$defs/key"}, {"type": "null"}]},
        "before": {"anyOf": [{"$ref": "#/$defs/row"}, {"type": "null"}]},
        "after": {"anyOf": [{"$ref": "#/$defs/row"}, {"type": "null"}]},
        "position": {"type": "string", "minLength": 1},
        "txid": {"type": ["integer", "null"]},
        "committed_at": {"type": "string", "pattern": _COMMIT_TIME},
        "origin": {"type": "string"},
        "unchanged": {
            "type": "array",
            "items": {"enum": [c.name for c in shape.columns]},
            "uniqueItems": True,
        },
        "schema_version": {"type": "integer", "minimum": SCHEMA_VERSION},
    }
    schema: JsonSchema = {
        "$schema": DRAFT,
        "title": detail_type,
        "description": (
            f"Detail of the {detail_type!r} events of {shape.ref.qualified} "
            f"(source {source}). Generated by `cdc schemas generate` from the "
            "table's columns; review and edit it, it is the standard the validator "
            "checks."
        ),
        "x-detail-type": detail_type,
        "x-table": shape.ref.qualified,
        "type": "object",
        "required": list(properties),
        "properties": properties,
    }
    if len(ops) == 1:
        properties.update(_op_rules(ops[0]))
    else:
        schema["allOf"] = [
            {
                "if": {"properties": {"op": {"const": op}}, "required": ["op"]},
                "then": {"properties": _op_rules(op)},
            }
            for op in ops
        ]
    schema["$defs"] = {
        "row": row,
        "shape": _SHAPE,
        "key": {
            "type": "object",
            "properties": key_properties,
            "required": list(shape.key),
            "additionalProperties": False,
        },
    }
    if any(isinstance(c.type, sqltypes.ARRAY) for c in shape.columns):
        # The inner levels of a multi-dimensional array: lists, values, nulls.
        schema["$defs"]["nested_array"] = {
            "type": "array",
            "items": {
                "anyOf": [
                    {"not": {"type": "array"}},
                    {"type": "null"},
                    {"$ref": "#/$defs/nested_array"},
                ]
            },
        }
    return schema


def table_schemas(
    shape: TableShape, template: str, source: str, dialect: Dialect
) -> dict[str, JsonSchema]:
    """A schema per DetailType the table's events carry: one per op with the default template
    (``{schema}.{table}.{op}``), one for all ops when the template has no ``{op}``."""
    by_type: dict[str, list[Op]] = {}
    for op in OPS:
        by_type.setdefault(render_detail_type(template, shape.ref, op), []).append(op)
    return {name: detail_schema(shape, name, ops, source, dialect) for name, ops in by_type.items()}


def file_name(detail_type: str) -> str:
    """A file name for a DetailType (which may hold any character): unsafe ones become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", detail_type).lstrip(".") + ".json"


def dump_schema(schema: JsonSchema) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_schemas(
    directory: Path, schemas: Mapping[str, JsonSchema], overwrite: bool = False
) -> list[tuple[Path, bool]]:
    """Write a file per DetailType; an existing file (perhaps edited) is kept unless
    ``overwrite``. The paths, each with whether it was written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, bool]] = []
    for detail_type, schema in schemas.items():
        path = directory / file_name(detail_type)
        if path.exists() and not overwrite:
            written.append((path, False))
            continue
        path.write_text(dump_schema(schema), encoding="utf-8")
        written.append((path, True))
    return written

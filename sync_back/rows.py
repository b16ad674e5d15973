"""Rows: one parsed event and its mapping -> the legacy row write it asks for.

The second pure step of sync back, between ``incoming.parse_message`` and the database
layer. Each mapped column's Detail field is found by its path and converted (``values``) to the
Python value the driver binds for the column's type; anything that PostgreSQL would refuse, or
that could only be stored by guessing, raises ``Invalid`` with a reason naming the Detail path
and the column (``order.total (column total): expected numeric, got 'abc'``). Strings are never
interpreted: hostile text is only text, and the database layer binds every value as a
parameter.

A missing optional field leaves its column out of ``values`` (the legacy row keeps what it
holds, so partial events are partial updates); an explicit null writes NULL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cdc.bus.incoming import Envelope, Invalid, describe, text_problem
from cdc.core.tables import TableRef
from sync_back.mapping import ColumnSpec, Mapping, WriteOp
from sync_back.policy import ConflictPolicy
from sync_back.values import CONVERTERS, Refused

# The inbox stores event ids; a longer "id" is not an id but a mistake or an attack.
EVENT_ID_MAX_LENGTH = 256


@dataclass(frozen=True, slots=True)
class RowWrite:
    """What one event asks of one legacy table, values already typed for the driver.

    ``values`` holds every mapped column the event carries (key included); ``key`` is the
    key columns' part of it; ``version`` is the version column's value when the mapping names
    one. json columns hold their JSON text.
    """

    event_id: str
    table: TableRef
    op: WriteOp
    key: dict[str, Any]
    values: dict[str, Any]
    version: Any | None
    policy: ConflictPolicy


@dataclass(frozen=True, slots=True)
class Pending:
    """A write on its way to the applier, with what the inbox, the policy and a dead letter
    need besides."""

    write: RowWrite
    detail_type: str
    mapping: Mapping
    body: str

    @property
    def version_column(self) -> str | None:
        return self.mapping.version_column


class _Missing:
    __slots__ = ()


_MISSING = _Missing()


@dataclass(frozen=True, slots=True)
class _Blocked:
    """The path runs into a value that has no keys (``customer`` is a string, not an object)."""

    parts: tuple[str, ...]
    value: Any
    next_part: str


@dataclass(frozen=True, slots=True)
class _Paths:
    """A mapping's paths, split, read once: reading them from the (pydantic) mapping for every
    event cost more than the rest of ``to_write``."""

    mapping: Mapping
    root: tuple[str, ...]
    event_id: tuple[str, ...]
    columns: tuple[tuple[str, ColumnSpec, tuple[str, ...]], ...]


_PATHS: dict[int, _Paths] = {}  # by id() of the mapping, which each entry keeps alive


def _paths(mapping: Mapping) -> _Paths:
    found = _PATHS.get(id(mapping))
    if found is None or found.mapping is not mapping:
        if len(_PATHS) >= 1000:  # mappings loaded again and again (tests): start over
            _PATHS.clear()
        found = _PATHS[id(mapping)] = _Paths(
            mapping,
            mapping.root_parts,
            mapping.id_parts,
            tuple((name, spec, spec.parts) for name, spec in mapping.columns.items()),
        )
    return found


def to_write(envelope: Envelope, mapping: Mapping) -> RowWrite:
    """The row write of one event; raises ``Invalid`` naming the field that is wrong."""
    paths = _paths(mapping)
    event_id = _event_id(envelope, mapping, paths.event_id)
    scope: Any = envelope.detail
    if paths.root:
        scope = _lookup(envelope.detail, paths.root)
        if scope is _MISSING or scope is None:
            raise Invalid(f"{mapping.root}: missing")
        if isinstance(scope, _Blocked):
            raise Invalid(f"{mapping.root}: {_blocked(scope, ())}")
        if not isinstance(scope, dict):
            raise Invalid(f"{mapping.root}: expected an object, got {describe(scope)}")
    values: dict[str, Any] = {}
    for name, spec, parts in paths.columns:
        raw = _lookup(scope, parts)
        if raw is _MISSING:
            if spec.required:
                raise Invalid(f"{mapping.where(name)}: missing")
            continue
        if isinstance(raw, _Blocked):
            raise Invalid(f"{mapping.where(name)}: {_blocked(raw, paths.root)}")
        if raw is None:
            if spec.required:
                raise Invalid(f"{mapping.where(name)}: null, but the column is required")
            values[name] = None
            continue
        try:
            values[name] = CONVERTERS[spec.type](raw, spec)
        except Refused as exc:
            raise Invalid(f"{mapping.where(name)}: {exc}") from None
    if mapping.strict:
        unused = _first_unused(scope, mapping)
        if unused:
            raise Invalid(f"{unused}: not used by any column, and the mapping is strict")
    return RowWrite(
        event_id=event_id,
        table=mapping.table,
        op=mapping.op,
        key={column: values[column] for column in mapping.key},
        values=values,
        version=values[mapping.version_column] if mapping.version_column else None,
        policy=mapping.conflict,
    )


def _event_id(envelope: Envelope, mapping: Mapping, id_parts: tuple[str, ...]) -> str:
    if not id_parts:
        return envelope.envelope_id
    value = _lookup(envelope.detail, id_parts)
    if value is _MISSING:
        # The new system did not put its own id in Detail: EventBridge's envelope id is
        # stable across redeliveries of the same event.
        return envelope.envelope_id
    where = f"event id at {mapping.id_path!r}"
    if isinstance(value, _Blocked) or not isinstance(value, str) or not value:
        shown = value.value if isinstance(value, _Blocked) else value
        raise Invalid(f"{where}: missing or not a string (got {describe(shown)})")
    if len(value) > EVENT_ID_MAX_LENGTH:
        raise Invalid(f"{where}: {len(value)} characters, over the maximum {EVENT_ID_MAX_LENGTH}")
    problem = text_problem(value)
    if problem:
        raise Invalid(f"{where}: {problem}")
    return value


def _lookup(node: Any, parts: tuple[str, ...]) -> Any:
    """The value at ``parts`` under ``node``; ``_MISSING`` when a key is absent or a step is
    null; ``_Blocked`` when a step is a scalar that cannot have keys."""
    for depth, part in enumerate(parts):
        if isinstance(node, dict):
            node = node.get(part, _MISSING)
        elif isinstance(node, list):
            if not (part.isascii() and part.isdigit()):
                return _Blocked(parts[:depth], node, part)
            index = int(part)
            node = node[index] if index < len(node) else _MISSING
        elif node is None:
            return _MISSING
        else:
            return _Blocked(parts[:depth], node, part)
        if node is _MISSING:
            return _MISSING
    return node


def _blocked(blocked: _Blocked, root: tuple[str, ...]) -> str:
    where = ".".join(root + blocked.parts)
    if isinstance(blocked.value, list):
        return f"{where} is a list, which has no field {blocked.next_part!r}"
    return f"{where} is {describe(blocked.value)}, which has no field {blocked.next_part!r}"


def _first_unused(scope: dict[str, Any], mapping: Mapping) -> str | None:
    used = {mapping.root_parts + spec.parts for spec in mapping.columns.values()}
    if mapping.id_parts:
        used.add(mapping.id_parts)
    prefixes = {path[:end] for path in used for end in range(1, len(path))}
    return _unused_under(scope, mapping.root_parts, used, prefixes)


def _unused_under(
    node: Any, at: tuple[str, ...], used: set[tuple[str, ...]], prefixes: set[tuple[str, ...]]
) -> str | None:
    # Recursion only follows the mapping's own paths, so its depth is theirs, not Detail's.
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        path = (*at, str(key))
        if path in used:
            continue
        if path in prefixes:
            if isinstance(value, dict | list):
                found = _unused_under(value, path, used, prefixes)
                if found:
                    return found
            continue
        return ".".join(path)
    return None

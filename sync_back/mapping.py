"""The sync-back mapping: which new-system events write which legacy table, and how.

Loaded once from the ``[sync_back]`` table of the service's TOML file (the caller reads the
file and passes the dict in) and validated whole at start-up: a mistake stops the process with
a ``ConfigError`` that names the mapping (index and detail_type) and the field, never at the
first event that meets it. Only the tables and columns named here are ever written; the
database layer quotes them as identifiers, so any non-empty name is safe.

Decisions a reader of the TOML should know:
- Paths are dot-separated keys under Detail (under ``root`` for the columns); a segment of
  digits indexes a list (``lines.0.sku``). A key that itself contains a dot cannot be reached.
- ``id_path`` is relative to Detail, not to ``root``; ``id_path = ""`` always uses the
  envelope id. It may not be the path of a column: an entity id there would make every later
  event about the same row look like a duplicate of the first.
- A missing optional field leaves its column out of the write (a partial update keeps what
  the legacy row holds); an explicit JSON null writes NULL.
- Key columns and the version column must be required, and a key column cannot be ``json``
  (PostgreSQL has no equality for ``json``).
- A delete mapping maps only its key columns and its version column; it writes nothing else.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cdc.core.errors import ConfigError
from cdc.core.tables import TableRef
from sync_back.policy import ConflictPolicy

ColumnType = Literal[
    "text", "int", "numeric", "float", "bool", "timestamptz", "timestamp", "date", "uuid", "json"
]
WriteOp = Literal["upsert", "delete"]

# Types whose values order the way versions must: a later version compares greater.
VERSION_TYPES: frozenset[str] = frozenset({"int", "numeric", "timestamptz", "timestamp", "date"})
DEFAULT_SCHEMA = "public"
SECTION = "sync_back"


def split_path(text: str) -> tuple[str, ...]:
    """``"customer.name"`` -> ``("customer", "name")``; an empty segment is refused."""
    parts = tuple(text.split("."))
    if any(not part for part in parts):
        raise ValueError(
            f"{text!r} is not a path: write dot-separated keys such as 'customer.name'"
        )
    return parts


def _check_path(value: str) -> str:
    split_path(value)
    return value


def _table(value: Any, info: ValidationInfo) -> TableRef:
    if isinstance(value, TableRef):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a table name such as 'public.orders' (got {value!r})")
    schema = (info.context or {}).get("default_schema", DEFAULT_SCHEMA)
    try:
        table = TableRef.parse(value, schema)
    except ValueError as exc:
        raise ValueError(f"{exc}; write schema.table, e.g. 'public.orders'") from None
    if not table.schema:
        raise ValueError(
            f"empty schema name in {value!r}; write schema.table, e.g. 'public.orders'"
        )
    return table


PathText = Annotated[str, Field(min_length=1)]


class ColumnSpec(BaseModel):
    """One legacy column and the Detail field (relative to the mapping's root) that fills it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: PathText
    type: ColumnType
    # TOML has real booleans and integers: a quoted "false" is a mistake, not a boolean.
    required: StrictBool = True
    max_length: StrictInt | None = Field(None, ge=1)

    _parts: tuple[str, ...] = PrivateAttr(())

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _check_path(value)

    @model_validator(mode="after")
    def _max_length_is_for_text(self) -> ColumnSpec:
        if self.max_length is not None and self.type != "text":
            raise ValueError(f"max_length applies to text columns only, not {self.type}")
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._parts = split_path(self.path)

    @property
    def parts(self) -> tuple[str, ...]:
        return self._parts


class Mapping(BaseModel):
    """One ``[[sync_back.mappings]]`` entry: a DetailType (and optional Source) -> a table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detail_type: Annotated[str, Field(min_length=1)]
    source: Annotated[str, Field(min_length=1)] | None = None
    table: Annotated[TableRef, PlainValidator(_table)]
    op: WriteOp
    key: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)]
    id_path: str = "id"
    version_column: Annotated[str, Field(min_length=1)] | None = None
    conflict: ConflictPolicy = "newer_wins"
    strict: StrictBool = False
    root: PathText | None = None
    columns: Annotated[dict[str, ColumnSpec], Field(min_length=1)]

    _root_parts: tuple[str, ...] = PrivateAttr(())
    _id_parts: tuple[str, ...] = PrivateAttr(())

    @field_validator("id_path", "root")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return value if not value else _check_path(value)

    @model_validator(mode="after")
    def _consistent(self) -> Mapping:
        if "" in self.columns:
            raise ValueError("columns: a column name is empty")
        if len(set(self.key)) != len(self.key):
            raise ValueError(f"key: a column is named twice in {list(self.key)}")
        for name in self.key:
            spec = self.columns.get(name)
            if spec is None:
                raise ValueError(
                    f"key: column {name!r} is not mapped; add it under "
                    f"[sync_back.mappings.columns] with the Detail path that holds it"
                )
            if not spec.required:
                raise ValueError(f"key: column {name!r} must be required (a row needs its key)")
            if spec.type == "json":
                raise ValueError(f"key: column {name!r} is json, which cannot be a key")
        if self.version_column is not None:
            spec = self.columns.get(self.version_column)
            if spec is None:
                raise ValueError(
                    f"version_column: column {self.version_column!r} is not mapped; add it "
                    f"under [sync_back.mappings.columns]"
                )
            if spec.type not in VERSION_TYPES:
                raise ValueError(
                    f"version_column: column {self.version_column!r} is {spec.type}; a version "
                    f"must be one of {', '.join(sorted(VERSION_TYPES))}"
                )
            if not spec.required:
                raise ValueError(
                    f"version_column: column {self.version_column!r} must be required "
                    f"(an event without a version cannot be ordered)"
                )
        if self.op == "delete":
            extra = sorted(set(self.columns) - set(self.key) - {self.version_column})
            if extra:
                raise ValueError(
                    f"columns: a delete writes no values; map only the key and version columns "
                    f"(remove {', '.join(extra)})"
                )
        if self.id_path:
            for name, spec in self.columns.items():
                if self.full_path(spec) == self.id_path:
                    raise ValueError(
                        f"id_path: {self.id_path!r} is also where column {name!r} is read; the "
                        f"event id must identify the event, not the row. Point id_path at the "
                        f'event\'s own id field, or set id_path = "" to use the envelope id'
                    )
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._root_parts = split_path(self.root) if self.root else ()
        self._id_parts = split_path(self.id_path) if self.id_path else ()

    @property
    def root_parts(self) -> tuple[str, ...]:
        return self._root_parts

    @property
    def id_parts(self) -> tuple[str, ...]:
        """Where the event id is in Detail; empty: always the envelope id."""
        return self._id_parts

    def full_path(self, spec: ColumnSpec) -> str:
        """The column's path from Detail, as reasons show it (``order.customer.name``)."""
        return f"{self.root}.{spec.path}" if self.root else spec.path

    def where(self, column: str) -> str:
        """A mapped column's place, as reasons show it: ``order.total (column total)``."""
        return f"{self.full_path(self.columns[column])} (column {column})"


class Mappings:
    """All mappings, looked up by (DetailType, Source); built by ``load_mappings``."""

    def __init__(self, mappings: Sequence[Mapping] = ()) -> None:
        self._all = tuple(mappings)
        self._index: dict[tuple[str, str | None], Mapping] = {}
        for mapping in self._all:
            self._index.setdefault((mapping.detail_type, mapping.source), mapping)

    def find(self, detail_type: str, source: str | None) -> Mapping | None:
        """The mapping for an event: one naming its source beats one that names none."""
        if source is not None:
            found = self._index.get((detail_type, source))
            if found is not None:
                return found
        return self._index.get((detail_type, None))

    def __iter__(self) -> Iterator[Mapping]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def __repr__(self) -> str:
        return f"Mappings({list(self._all)!r})"


def load_mappings(section: Any, default_schema: str = DEFAULT_SCHEMA) -> Mappings:
    """Mappings from the ``[sync_back]`` table of the TOML file (``None``: no mappings).

    Only its ``mappings`` key is read here; the consumer's own settings may sit beside it.
    An unqualified table name gets ``default_schema``.
    """
    if section is None:
        return Mappings()
    if not isinstance(section, dict):
        raise ConfigError(SECTION, f"expected a table ([{SECTION}]), got {type(section).__name__}")
    raw = section.get("mappings", [])
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ConfigError(
            f"{SECTION}.mappings",
            f"expected an array of tables, written [[{SECTION}.mappings]] in TOML",
        )
    loaded: list[Mapping] = []
    seen: dict[tuple[str, str | None], str] = {}
    for index, item in enumerate(raw):
        name = _mapping_name(index, item)
        try:
            mapping = Mapping.model_validate(item, context={"default_schema": default_schema})
        except ValidationError as exc:
            raise ConfigError(name, _describe(exc)) from None
        pair = (mapping.detail_type, mapping.source)
        if pair in seen:
            raise ConfigError(
                name,
                f"the same detail_type and source as {seen[pair]}; an event must match one "
                f"mapping: merge them or tell them apart by source",
            )
        seen[pair] = name
        loaded.append(mapping)
    return Mappings(loaded)


def _mapping_name(index: int, item: dict[str, Any]) -> str:
    name = f"{SECTION}.mappings[{index}]"
    detail_type = item.get("detail_type")
    if isinstance(detail_type, str) and detail_type:
        name += f" ({detail_type})"
    return name


def _describe(exc: ValidationError) -> str:
    messages: list[str] = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            last = str(error["loc"][-1]) if error["loc"] else ""
            known = _known_keys(error["loc"])
            close = difflib.get_close_matches(last, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            messages.append(f"{loc}: unknown key{hint}")
            continue
        if kind == "missing":
            messages.append(f"{loc}: required, but missing")
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        if "input" in error and not isinstance(error["input"], dict | list) and loc:
            message += f" (got {error['input']!r})"
        messages.append(f"{loc}: {message}" if loc else message)
    return "; ".join(messages)


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    # ("columns", "<name>", "<key>") is inside a column; a one-part location is the mapping's.
    if len(loc) == 3 and loc[0] == "columns":
        return list(ColumnSpec.model_fields)
    return list(Mapping.model_fields)

"""The schemas the validator checks Details against, by ``DetailType``: loaded from a directory
of schema files, each compiled once, and the errors of a Detail in words an operator can act on.

A schema file is a JSON object; its ``x-detail-type`` (or, when absent, the file name without
``.json``) names the DetailType it checks. ``cdc.validate.schemas`` generates them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from cdc.core.errors import ConfigError
from cdc.validate.schemas import JsonSchema

# Each error message is cut to this length: a message quotes the offending value, which may be
# a whole row image.
MAX_ERROR_CHARS = 400


def _location(error: ValidationError) -> str:
    where = "detail"
    for part in error.absolute_path:
        where += f"[{part}]" if isinstance(part, int) else f".{part}"
    return where


def _leaves(error: ValidationError) -> Iterable[ValidationError]:
    """The errors under an anyOf/oneOf that tell what is wrong, rather than 'not valid under
    any of the given schemas'; the error itself when no alternative explains it better."""
    # The "or null" alternative of a nullable column explains nothing.
    relevant = [
        e
        for e in error.context or ()
        if not (e.validator == "type" and e.validator_value == "null")
    ]
    if not relevant:
        yield error
        return
    depth = max(len(e.absolute_path) for e in relevant)
    if depth > len(error.absolute_path):
        # Of the alternatives, the ones that got deepest into the value explain it best.
        chosen = [e for e in relevant if len(e.absolute_path) == depth]
    else:
        # None does: the first alternative's errors (a generated schema lists the column's
        # own type first, then null, then nested arrays).
        first = relevant[0].relative_schema_path[0]
        chosen = [e for e in relevant if e.relative_schema_path[0] == first]
    for sub in chosen:
        yield from _leaves(sub)


def format_error(error: ValidationError) -> str:
    text = f"{_location(error)}: {error.message}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


class SchemaRegistry:
    """The schemas the validator checks against, by DetailType, each compiled once."""

    def __init__(self, schemas: Mapping[str, JsonSchema]) -> None:
        self._validators: dict[str, Draft202012Validator] = {}
        for detail_type, schema in schemas.items():
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise ConfigError(
                    "CDC_SCHEMAS_DIR",
                    f"the schema of {detail_type!r} is not a valid JSON Schema: {exc.message}",
                ) from None
            self._validators[detail_type] = Draft202012Validator(
                schema, format_checker=Draft202012Validator.FORMAT_CHECKER
            )

    @classmethod
    def load(cls, directory: Path) -> SchemaRegistry:
        if not directory.is_dir():
            raise ConfigError(
                "CDC_SCHEMAS_DIR",
                f"no directory at {directory}; run "
                "`cdc schemas generate` or point CDC_SCHEMAS_DIR at the schemas",
            )
        schemas: dict[str, JsonSchema] = {}
        origins: dict[str, Path] = {}
        for path in sorted(directory.glob("*.json")):
            try:
                schema = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise ConfigError("CDC_SCHEMAS_DIR", f"{path} is not JSON: {exc}") from None
            if not isinstance(schema, dict):
                raise ConfigError("CDC_SCHEMAS_DIR", f"{path} is not a JSON object")
            detail_type = schema.get("x-detail-type", path.stem)
            if not isinstance(detail_type, str) or not detail_type:
                raise ConfigError("CDC_SCHEMAS_DIR", f"{path}: x-detail-type is not a string")
            if detail_type in schemas:
                raise ConfigError(
                    "CDC_SCHEMAS_DIR",
                    f"{path} and {origins[detail_type]} both "
                    f"describe the DetailType {detail_type!r}",
                )
            schemas[detail_type], origins[detail_type] = schema, path
        return cls(schemas)

    def __contains__(self, detail_type: object) -> bool:
        return detail_type in self._validators

    def __len__(self) -> int:
        return len(self._validators)

    @property
    def detail_types(self) -> list[str]:
        return sorted(self._validators)

    def errors(self, detail_type: str, detail: Any) -> list[str] | None:
        """Every way ``detail`` breaks the schema of its DetailType, in document order
        (empty: valid); None when no schema knows the DetailType."""
        validator = self._validators.get(detail_type)
        if validator is None:
            return None
        found = [leaf for error in validator.iter_errors(detail) for leaf in _leaves(error)]
        found.sort(key=lambda e: ([str(p) for p in e.absolute_path], e.message))
        messages: list[str] = []
        for error in found:
            text = format_error(error)
            if text not in messages:
                messages.append(text)
        return messages

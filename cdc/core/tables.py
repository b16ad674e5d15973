"""Tables of the legacy database by name, and SQL identifier quoting."""

from __future__ import annotations

from typing import NamedTuple


def quote_ident(name: str) -> str:
    """An SQL identifier in double quotes, for statements written by hand (DDL, COPY)."""
    return '"' + name.replace('"', '""') + '"'


class TableRef(NamedTuple):
    """A table by schema and name. A NamedTuple: it keys the per-table caches of the hot path,
    and a tuple hashes in C where a frozen dataclass calls a Python ``__hash__``."""

    schema: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def quoted(self) -> str:
        """``"schema"."name"``, as SQL."""
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    @classmethod
    def parse(cls, text: str, default_schema: str) -> TableRef:
        schema, dot, name = text.strip().rpartition(".")
        if not name:
            raise ValueError(f"empty table name in {text!r}")
        return cls(schema if dot else default_schema, name)

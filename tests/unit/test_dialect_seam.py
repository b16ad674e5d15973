"""One seam per database: no code outside the dialect modules asks which database it runs on.

The source text is scanned (comments and docstrings aside, where naming SQLite explains a
why): an identifier with ``sqlite`` in it, ``dialect.name``, ``get_backend_name``, a string
that is a dialect's name (a comparison or a key), or SQLite's own catalog (``sqlite_master``,
``sqlite_sequence``) is a branch that belongs behind ``cdc.core.dialects`` (or, for capture,
``cdc.capture.dialects``). Text for people (a message, a file name, an example URL) passes.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("cdc", "sync_back", "migrations")
# Where the database may be named, and why.
EXEMPT = {
    "cdc/core/dialects": "the dialect objects: one module per database",
    "cdc/capture/dialects": "capture's per-database code: values, triggers, change log, backfill",
    # A migration creates what it created the day it was written, whatever the dialect objects
    # say later: its branches are frozen history (migrations/env.py is scanned).
    "migrations/versions": "the migrations' own history",
}
_DIALECT_NAMES = {"sqlite", "postgresql", "postgres"}


def _docstring_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def _string_value(token: str) -> str:
    try:
        value = ast.literal_eval(token)
    except (ValueError, SyntaxError):  # an f-string: its text will do
        return token
    return value if isinstance(value, str) else ""


def violations(source: str) -> list[tuple[int, str]]:
    """Each place where ``source`` asks which database it runs on: (line, token)."""
    docstrings = _docstring_lines(ast.parse(source))
    found: list[tuple[int, str]] = []
    code: list[tokenize.TokenInfo] = []  # names and operators, in order
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        line = token.start[0]
        if token.type == tokenize.NAME:
            code.append(token)
            if "sqlite" in token.string.lower() or token.string == "get_backend_name":
                found.append((line, token.string))
        elif token.type == tokenize.OP:
            code.append(token)
        elif token.type == tokenize.STRING and line not in docstrings:
            value = _string_value(token.string).lower()
            if value in _DIALECT_NAMES or "sqlite_" in value:
                found.append((line, token.string))
    for first, dot, name in zip(code, code[1:], code[2:], strict=False):
        if (first.string, dot.string, name.string) == ("dialect", ".", "name"):
            found.append((first.start[0], "dialect.name"))
    return sorted(found, key=lambda hit: hit[0])


def _scanned_files() -> list[Path]:
    files = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if not any(relative.startswith(prefix + "/") for prefix in EXEMPT):
                files.append(path)
    return files


def test_no_code_outside_the_dialect_modules_asks_which_database_it_runs_on() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {token}"
        for path in _scanned_files()
        for line, token in violations(path.read_text(encoding="utf-8"))
    ]
    assert found == [], "branch on the database behind cdc.core.dialects:\n" + "\n".join(found)


def test_the_scan_covers_the_service() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in _scanned_files()}
    assert {"cdc/core/state.py", "sync_back/applier.py", "migrations/env.py"} <= names
    assert "cdc/capture/values.py" in names and "cdc/core/dialects/sqlite.py" not in names


def test_the_scan_finds_each_way_of_asking() -> None:
    source = """
from sqlalchemy.dialects import postgresql, sqlite

def f(engine, url, dialect):
    if engine.dialect.name == "sqlite":
        pass
    sqlite_mode = url.get_backend_name() in ("postgres",)
    return f"SELECT name FROM sqlite_master"
"""
    assert [token for _, token in violations(source)] == [
        "sqlite",
        '"sqlite"',
        "dialect.name",
        "sqlite_mode",
        "get_backend_name",
        '"postgres"',
        'f"SELECT name FROM sqlite_master"',
    ]


def test_the_scan_lets_comments_docstrings_and_messages_name_the_database() -> None:
    source = '''
"""On SQLite the tables carry a prefix; "sqlite" here is prose."""

def g():
    """SQLite keeps moments as text."""
    # SQLite has one writer at a time
    raise ValueError("cannot open the SQLite file; use sqlite:///path.db")
'''
    assert violations(source) == []

"""The house's measures of size, held by a test so they stay true: no production module over 400
lines, no function over 80, and at most ten modules directly in ``cdc/`` (the rest live in the
folder of their job)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = (ROOT / "cdc", ROOT / "sync_back")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
MAX_MODULES_AT_TOP = 10


def modules() -> list[Path]:
    return sorted(path for package in PRODUCTION for path in package.rglob("*.py"))


def test_the_production_code_is_where_the_rules_look() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in modules()}
    assert {"cdc/cli.py", "cdc/core/settings.py", "sync_back/consumer.py"} <= names


def test_no_module_is_over_400_lines() -> None:
    long = {
        path.relative_to(ROOT).as_posix(): lines
        for path in modules()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_over_80_lines() -> None:
    # From its first decorator (or ``def``) to its last line, nested functions included.
    long: dict[str, int] = {}
    for path in modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = (node.end_lineno or node.lineno) - first + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.name}"] = lines
    assert long == {}


def test_at_most_ten_modules_sit_directly_in_cdc() -> None:
    top = sorted(path.name for path in (ROOT / "cdc").glob("*.py"))
    assert len(top) <= MAX_MODULES_AT_TOP, top

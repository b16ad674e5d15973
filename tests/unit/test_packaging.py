"""The wheel lists its packages by hand (the migrations ship from another folder as
``cdc.migrations``): every package of the source tree must be in that list, or the installed
service (the container image) would miss it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_of_the_tree_is_in_the_wheel() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for top in ("cdc", "sync_back")
        for path in (ROOT / top).rglob("__init__.py")
    }
    assert found - listed == set()
    assert {"cdc.migrations", "cdc.migrations.versions"} <= listed

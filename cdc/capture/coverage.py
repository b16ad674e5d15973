"""Whether capture covers every table of CDC_TABLES: the table exists, and its changes reach
the stream (its capture triggers in ``changelog`` mode; the publication in ``logical`` mode).

A table that is not covered yields no change, so without this check the worker would idle
while looking healthy. The worker asks at start-up and every ``CHECK_SECONDS`` after
(``cdc.capture.worker``); each gap is one line naming the table and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, inspect

from cdc.capture import slots, triggers
from cdc.core.tables import TableRef

CHECK_SECONDS = 30.0


@dataclass(frozen=True)
class Coverage:
    engine: Engine
    refs: Sequence[TableRef]
    capture: str  # "changelog" or "logical"
    state_schema: str
    publication: str

    def gaps(self) -> list[str]:
        """One line per table of CDC_TABLES that is not captured, saying why; [] when none."""
        inspector = inspect(self.engine)
        present = [r for r in self.refs if inspector.has_table(r.name, schema=r.schema)]
        lines = [
            f"table {ref.qualified} does not exist (check CDC_TABLES: names are schema.table)"
            for ref in self.refs
            if ref not in present
        ]
        if self.capture == "logical":
            return lines + self._unpublished(present)
        captured = set(triggers.installed(self.engine, self.state_schema))
        return lines + [
            f"table {ref.qualified} has no capture triggers (run `cdc setup`)"
            for ref in present
            if ref.qualified not in captured
        ]

    def _unpublished(self, refs: Sequence[TableRef]) -> list[str]:
        with self.engine.connect() as connection:
            found = slots.publication_of(connection, self.publication)
        if found is None:
            return [
                f"publication {self.publication} does not exist in this database (run "
                "`cdc setup`, or name the DBA's publication in CDC_PUBLICATION_NAME)"
            ]
        return [
            f"table {ref.qualified} is not in publication {self.publication} (run `cdc setup`)"
            for ref in refs
            if ref not in found.tables
        ]

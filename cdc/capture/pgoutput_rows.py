"""The pgoutput row messages met nearly every time, read in one pass.

An Insert, or an Update without an old tuple, is read straight from its bytes into a row of
converted values: what ``cdc.capture.pgoutput.decode`` followed by a per-column conversion
does, without the intermediate message and tuple of raw values. Anything else, or anything
this reader does not fully understand (a binary value, a tuple of another length than the
relation's, a malformed message), it leaves to ``decode``, which raises the precise error. The
layout is pgoutput protocol version 1, as in ``cdc.capture.pgoutput``; the unit tests hold the
two readers to the same results.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol, TypeAlias, TypeVar

Columns: TypeAlias = tuple[tuple[str, Callable[[str], Any]], ...]


class Shape(Protocol):
    """What the reader needs of a relation: its columns' names and converters, in order."""

    @property
    def columns(self) -> Columns: ...


S = TypeVar("S", bound=Shape)

_INSERT, _UPDATE, _NEW = b"IUN"
_TEXT, _NULL, _UNCHANGED = b"tnu"
_u32 = struct.Struct("!I").unpack_from


def read_new_row(
    data: bytes, shapes: Mapping[int, S]
) -> tuple[S, Literal["insert", "update"], dict[str, Any], tuple[str, ...]] | None:
    """The relation's shape, the op, the row and the names of its unchanged TOASTed columns
    (which are not put in the row) of an Insert or an Update without an old tuple. None for
    any other message, a relation not in ``shapes``, or a tuple with other than text, null
    and unchanged values; a length running past the message is caught by the end check."""
    try:
        kind = data[0]
        if (kind != _INSERT and kind != _UPDATE) or data[5] != _NEW:
            return None
        shape = shapes.get(_u32(data, 1)[0])
        if shape is None:
            return None
        columns = shape.columns
        if data[6] << 8 | data[7] != len(columns):
            return None
        pos = 8
        row: dict[str, Any] = {}
        unchanged: list[str] | None = None
        for name, convert in columns:
            value_kind = data[pos]
            if value_kind == _TEXT:
                (length,) = _u32(data, pos + 1)
                start = pos + 5
                pos = start + length
                row[name] = convert(data[start:pos].decode())
            elif value_kind == _NULL:
                row[name] = None
                pos += 1
            elif value_kind == _UNCHANGED:
                if unchanged is None:
                    unchanged = []
                unchanged.append(name)
                pos += 1
            else:
                return None
    except (IndexError, ValueError, struct.error):
        return None
    if pos != len(data):
        return None
    return (
        shape,
        "insert" if kind == _INSERT else "update",
        row,
        tuple(unchanged) if unchanged else (),
    )

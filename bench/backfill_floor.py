"""The floor under any Python backfill, against ``COPY ... TO STDOUT``: what the 0.3 target of
``backfill_throughput.py`` would leave for Python.

Three figures on one table, in one run:

- ``COPY (SELECT * FROM table) TO STDOUT`` read by psycopg (the benchmark's baseline);
- fetching every row as ``row_to_json(row)::text`` with its key (what a backfill must read);
- the least Python work an event needs: its uuid5 id and a Detail built by string
  concatenation around the server's JSON (no parsing, no value conversion, no chunk logic),
  then a ``BusEntry``.

It prints the best ratio a Python backfill could reach: COPY's time over the fetch and the
floor run one after the other, and over the slower of the two (were they overlapped perfectly).
Nothing here is the service's code path; it bounds it.
"""

from __future__ import annotations

import argparse
import time

import psycopg
from common import LEGACY_TABLE, capture_settings, libpq, prepare, scratch_database, seed_legacy

from cdc.bus.events import BusEntry, event_ids


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    rows_count = args.rows
    with scratch_database() as url:
        prepare(capture_settings(url)).dispose()
        seed_legacy(url, rows_count)
        with psycopg.connect(libpq(url)) as conn:
            started = time.perf_counter()
            with conn.cursor().copy(f"COPY (SELECT * FROM {LEGACY_TABLE}) TO STDOUT") as copy:
                for _ in copy:
                    pass
            copy_s = time.perf_counter() - started

            started = time.perf_counter()
            rows = conn.execute(
                f"SELECT row_to_json(r)::text, r.id::text FROM {LEGACY_TABLE} r ORDER BY r.id"
            ).fetchall()
            fetch_s = time.perf_counter() - started

            make_id = event_ids("legacy")
            started = time.perf_counter()
            entries = []
            for image, key in rows:
                identifier = make_id(f"backfill:1:[{key}]")
                detail = (
                    f'{{"id":"{identifier}","op":"read","table":"public.accounts",'
                    f'"key":{{"id":{key}}},"before":null,"after":{image},'
                    '"position":"0","txid":null}'
                )
                entries.append(
                    BusEntry(
                        identifier,
                        "public.accounts",
                        "legacy",
                        "accounts.read",
                        None,
                        detail,
                        len(detail),
                    )
                )
            floor_s = time.perf_counter() - started
    per_row = 1e6 / rows_count
    print(f"COPY TO STDOUT: {rows_count / copy_s:,.0f} rows/s ({copy_s * per_row:.2f} us/row)")
    print(
        f"fetch row_to_json: {fetch_s * per_row:.2f} us/row; Python floor (id, Detail, entry): "
        f"{floor_s * per_row:.2f} us/row"
    )
    print(
        f"best ratio to COPY: {copy_s / (fetch_s + floor_s):.2f} one after the other, "
        f"{copy_s / max(fetch_s, floor_s):.2f} perfectly overlapped (the target is 0.3)"
    )


if __name__ == "__main__":
    main()

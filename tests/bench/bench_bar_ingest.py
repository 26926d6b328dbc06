"""Bar ingest into PostgreSQL: the collector's `BarStore` against raw asyncpg COPY into the same table.

The same synthetic bars (SYMBOLS per batch, BATCHES batches) are written three ways, each into the `bars`
table under a venue of its own, alternating within one run so the table's size and the machine's load are
shared:
- raw COPY (the ceiling): `copy_records_to_table("bars", ...)` with the rows already built, in writes of
  the store's `flush_rows`; it fails on a bar that is there already, so it is no collector;
- the store: `BarStore.add` for every batch, then `flush` (rows built from the batches, idempotent writes);
- the store again over bars it has written (a replay that restarts over stored days: nothing new lands).
Printed: rows per second of each and the store's ratio to raw COPY. Embedded PostgreSQL unless
QMP_DATABASE_URL selects a running one.

    .venv/bin/python tests/bench/bench_bar_ingest.py [--symbols 1000] [--batches 300] [--rounds 3] [--json]
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import psutil

from qmp_collector.sources import SyntheticSource
from qmp_collector.store import COLUMNS, BarStore, records
from qmp_core.db import migrate
from qmp_core.messages import BarBatch
from qmp_ops.runtime.postgres_server import EmbeddedPostgres

START_NS = 1_700_000_000 * 1_000_000_000


async def raw_copy(pool: asyncpg.Pool, batches: list[BarBatch], venue: str, flush_rows: int) -> float:
    rows = [row for b in batches for row in records(b)]
    rows = [(r[0], venue, *r[2:]) for r in rows]
    start = time.perf_counter()
    async with pool.acquire() as connection:
        for i in range(0, len(rows), flush_rows):
            await connection.copy_records_to_table("bars", records=rows[i:i + flush_rows], columns=COLUMNS)
    return time.perf_counter() - start


async def store_write(pool: asyncpg.Pool, batches: list[BarBatch], flush_rows: int) -> tuple[float, int]:
    store = BarStore(pool, flush_rows=flush_rows)
    start = time.perf_counter()
    for batch in batches:
        await store.add(batch)
    await store.flush()
    return time.perf_counter() - start, store.rows_written


async def main_async(args: argparse.Namespace, database_url: str) -> dict:
    await migrate(database_url)
    source = SyntheticSource(args.symbols, seed=7, start_ns=START_NS, bar_seconds=60)
    template = [source.next_batch() for _ in range(args.batches)]
    rows = args.symbols * args.batches
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4)
    assert pool is not None
    runs: dict[str, list[float]] = {"raw_copy": [], "store": [], "store_over_stored": []}
    tag = f"ingest{os.getpid()}"
    try:
        for round_ in range(args.rounds):
            venue = f"{tag}r{round_}"
            runs["raw_copy"].append(rows / await raw_copy(pool, template, venue + "raw", args.flush_rows))
            batches = [BarBatch(**{**_fields(b), "venue": venue + "store"}) for b in template]
            seconds, written = await store_write(pool, batches, args.flush_rows)
            if written != rows:
                raise RuntimeError(f"the store wrote {written} of {rows} rows")
            runs["store"].append(rows / seconds)
            seconds, written = await store_write(pool, batches, args.flush_rows)
            if written != 0:
                raise RuntimeError(f"the store wrote {written} rows over stored bars; expected none")
            runs["store_over_stored"].append(rows / seconds)
            print(f"\rround {round_ + 1}/{args.rounds}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        async with pool.acquire() as connection:
            await connection.execute("DELETE FROM bars WHERE venue LIKE $1", f"{tag}%")
    finally:
        await pool.close()
    ratios = [s / r for s, r in zip(runs["store"], runs["raw_copy"], strict=True)]
    return {
        "symbols": args.symbols, "batches": args.batches, "rows": rows, "flush_rows": args.flush_rows,
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
        "rows_per_s": {name: _spread(values) for name, values in runs.items()},
        "store_over_raw_copy": _spread(ratios, digits=3),
    }


def _fields(batch: BarBatch) -> dict:
    return {f: getattr(batch, f) for f in batch.__struct_fields__}


def _spread(values: list[float], digits: int = 0) -> dict[str, float]:
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flush-rows", type=int, default=50_000, help="rows per write (the collector's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    postgres = None
    try:
        if os.environ.get("QMP_DATABASE_URL"):
            database_url = os.environ["QMP_DATABASE_URL"]
        else:
            postgres = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="qmp-bench-ingest-")) / "postgres")
            database_url = postgres.start()
        result = asyncio.run(main_async(args, database_url))
    finally:
        if postgres is not None:
            postgres.stop()
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(f"{result['rows']:,} bars ({result['symbols']} symbols x {result['batches']} batches), "
          f"writes of {result['flush_rows']:,}, load {result['load_average']}")
    for name, spread in result["rows_per_s"].items():
        print(f"  {name:18s} rows/s min {spread['min']:>10,.0f}  median {spread['median']:>10,.0f}  "
              f"max {spread['max']:>10,.0f}")
    ratio = result["store_over_raw_copy"]
    print(f"  store / raw COPY   min {ratio['min']:.3f}  median {ratio['median']:.3f}  max {ratio['max']:.3f} "
          f"(goal >= 0.8)")


if __name__ == "__main__":
    main()

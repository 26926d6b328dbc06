"""`qmp import` against raw COPY of the same bars into the same table, in the same run.

The same synthetic daily bars (SYMBOLS symbols x DAYS days) are written as:
- one CSV per symbol (date, open, high, low, close, volume: the vendors' export shape), which `qmp import`
  reads, checks row by row and writes (`import_bars`, `--threads`);
- one CSV shaped exactly like the `bars` table (ts, venue, symbol, open, high, low, close, volume), which
  raw COPY sends straight to PostgreSQL on one connection (`COPY bars FROM STDIN (FORMAT csv)`): the
  ceiling of loading these rows, with no reading, checking or resuming on the client.
Each round writes both under venues of their own into one `bars` table, alternating, so the table's size
and the machine's load are shared; then the import runs again over what it wrote (every chunk skipped).
Printed: rows/s of each (min / median / max of the rounds), the import's ratio to raw COPY, the load.
Embedded PostgreSQL unless QMP_DATABASE_URL selects a running one.

    .venv/bin/python tests/bench/bench_import.py [--symbols 200] [--days 2520] [--threads 8] [--rounds 3] [--json]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import numpy as np
import pandas as pd
import psutil

from qmp_core.db import migrate
from qmp_core.service import run_service
from qmp_ops.history_import import COLUMNS, import_bars
from qmp_ops.runtime.postgres_server import EmbeddedPostgres


def write_files(directory: Path, symbols: int, days: int) -> tuple[Path, bytes]:
    """Write one CSV per symbol, and the same bars as one table-shaped CSV (its venue a placeholder)."""
    per_symbol = directory / "per_symbol"
    per_symbol.mkdir()
    dates = pd.bdate_range("2000-01-03", periods=days)
    stamps = (dates + pd.Timedelta(hours=21)).strftime("%Y-%m-%d %H:%M:%S+00")
    rng = np.random.default_rng(11)
    table_rows = []
    for k in range(symbols):
        close = 50 * np.exp(np.cumsum(rng.normal(0, 0.015, days)))
        frame = pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "open": close * 0.996, "high": close * 1.012,
                              "low": close * 0.988, "close": close, "volume": np.round(1e6 / close)})
        frame.to_csv(per_symbol / f"S{k:04d}.csv", index=False)
        table_rows.append(pd.DataFrame({"ts": stamps, "venue": "VENUE", "symbol": f"S{k:04d}",
                                        **{c: frame[c] for c in ("open", "high", "low", "close", "volume")}}))
    return per_symbol, pd.concat(table_rows).to_csv(index=False, header=False).encode()


async def raw_copy(database_url: str, table: bytes, venue: str) -> float:
    data = table.replace(b",VENUE,", f",{venue},".encode())  # before the clock: not the COPY's work
    connection = await asyncpg.connect(database_url)
    try:
        start = time.perf_counter()
        await connection.copy_to_table("bars", source=_chunks(data), columns=COLUMNS, format="csv")
        return time.perf_counter() - start
    finally:
        await connection.close()


async def _chunks(data: bytes, size: int = 1 << 20):
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def main_async(args: argparse.Namespace, database_url: str, directory: Path) -> dict:
    await migrate(database_url)
    per_symbol, table = write_files(directory, args.symbols, args.days)
    rows = args.symbols * args.days
    runs: dict[str, list[float]] = {"raw_copy": [], "import": [], "import_again": []}
    tag = f"imp{os.getpid()}"
    for round_ in range(args.rounds):
        venue = f"{tag}r{round_}"
        runs["raw_copy"].append(rows / await raw_copy(database_url, table, venue + "raw"))
        report = await import_bars(database_url, [per_symbol], venue + "imp", threads=args.threads)
        if report.imported != rows or report.rejected:
            raise RuntimeError(f"the import wrote {report.imported} of {rows} rows, rejected {report.rejected}")
        runs["import"].append(rows / report.seconds)
        again = await import_bars(database_url, [per_symbol], venue + "imp", threads=args.threads)
        if again.imported or again.chunks_written:
            raise RuntimeError(f"the import again wrote {again.imported} rows; expected none")
        runs["import_again"].append(rows / again.seconds)
        print(f"\rround {round_ + 1}/{args.rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("DELETE FROM bars WHERE venue LIKE $1", f"{tag}%")
        await connection.execute("DELETE FROM import_chunks WHERE venue LIKE $1", f"{tag}%")
    finally:
        await connection.close()
    ratios = [i / r for i, r in zip(runs["import"], runs["raw_copy"], strict=True)]
    return {
        "symbols": args.symbols, "days": args.days, "rows": rows, "threads": args.threads, "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
        "rows_per_s": {name: _spread(values) for name, values in runs.items()},
        "import_over_raw_copy": _spread(ratios, digits=3),
    }


def _spread(values: list[float], digits: int = 0) -> dict[str, float]:
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--days", type=int, default=2520)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    postgres = None
    with tempfile.TemporaryDirectory(prefix="qmp-bench-import-") as scratch:
        try:
            if os.environ.get("QMP_DATABASE_URL"):
                database_url = os.environ["QMP_DATABASE_URL"]
            else:
                postgres = EmbeddedPostgres(Path(scratch) / "postgres")
                database_url = postgres.start()
            (Path(scratch) / "files").mkdir()
            # uvloop, as `qmp import` runs: both ways are timed on the same loop.
            result = run_service(main_async(args, database_url, Path(scratch) / "files"))
        finally:
            if postgres is not None:
                postgres.stop()
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(f"{result['rows']:,} bars ({result['symbols']} symbols x {result['days']} days), import with "
          f"{result['threads']} threads on {result['cpus']} CPUs, load {result['load_average']}")
    for name, spread in result["rows_per_s"].items():
        print(f"  {name:14s} rows/s min {spread['min']:>10,.0f}  median {spread['median']:>10,.0f}  "
              f"max {spread['max']:>10,.0f}")
    ratio = result["import_over_raw_copy"]
    print(f"  import / raw COPY  min {ratio['min']:.3f}  median {ratio['median']:.3f}  max {ratio['max']:.3f} "
          f"(goal >= 0.8)")


if __name__ == "__main__":
    main()

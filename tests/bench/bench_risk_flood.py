"""Risk's memory when an ingest floods it with symbols: the listing cap (QMP_MAX_LISTINGS) against none.

The baseline, in the same process: a risk engine fed 500 symbols for 30 days. Then one flood of 60,000
new symbols (six batches of 10,000, the most one batch may hold) arrives, as in issue 12, once with the
default cap and once with a cap above the flood. Each run is a fresh process, so its resident memory is its
own; it prints the resident memory after the baseline and after the flood, and the growth ratio.

    .venv/bin/python tests/bench/bench_risk_flood.py [--flood 60000] [--json]
"""

import argparse
import gc
import json
import multiprocessing
import sys

import numpy as np
import psutil

from qmp_core.clock import NS_PER_DAY, TestClock
from qmp_core.messages import MAX_SYMBOLS_PER_BATCH, BarBatch
from qmp_risk.config import RiskSettings
from qmp_risk.engine import RiskEngine

T0 = 1_600_000_000 * 1_000_000_000


def batch(ts: int, symbols: list[str], closes: np.ndarray) -> BarBatch:
    values = closes.tolist()
    return BarBatch(venue="bench", ts_event=ts, symbols=symbols, open=values, high=values, low=values,
                    close=values, volume=[1.0] * len(symbols))


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def run(max_listings: int, flood: int) -> dict[str, float]:
    engine = RiskEngine(RiskSettings(max_listings=max_listings), TestClock(T0))
    rng = np.random.default_rng(7)
    universe = [f"S{i}" for i in range(500)]
    for day in range(30):
        engine.on_bars(batch(T0 + day * NS_PER_DAY, universe, 100.0 + rng.random(len(universe))))
    baseline = rss_mb()
    rejected = 0
    for part, first in enumerate(range(0, flood, MAX_SYMBOLS_PER_BATCH)):
        names = [f"F{i}" for i in range(first, min(flood, first + MAX_SYMBOLS_PER_BATCH))]
        validated = engine.on_bars(batch(T0 + (30 + part) * NS_PER_DAY, names, 100.0 + rng.random(len(names))))
        rejected += len(validated.rejected) if validated is not None else 0
    after = rss_mb()
    return {"max_listings": max_listings, "listings_tracked": engine.history.symbols, "rows_rejected": rejected,
            "rss_baseline_mb": round(baseline, 1), "rss_after_flood_mb": round(after, 1),
            "growth_over_baseline": round(after / baseline, 2)}


def in_a_process(max_listings: int, flood: int) -> dict[str, float]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run, (max_listings, flood))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=60_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    capped = in_a_process(RiskSettings().max_listings, args.flood)
    uncapped = in_a_process(args.flood + 1_000, args.flood)
    results = {"capped": capped, "uncapped": uncapped,
               "capped_growth_over_uncapped": round(capped["growth_over_baseline"] / uncapped["growth_over_baseline"],
                                                    2)}
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        return
    for name, value in results.items():
        print(f"{name:28s} {value}")


if __name__ == "__main__":
    main()

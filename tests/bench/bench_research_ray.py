"""A 40-fold purged walk-forward (and its combinatorial splits and configuration grid) in one process against the
same work as Ray tasks on 1, 2 and every core, in the same run: seconds, the speed-up over one process, and whether
every number came out the same.

The work is `walk_forward.out_of_sample` of the lab's fitted reference strategy (`RidgeReturns`, refitted per split)
on SYMBOLS synthetic random-walk prices over DAYS rows (seeded): FOLDS walk-forward folds, C(6, 2) = 15
combinatorial splits and the strategy's configuration neighbourhood, each an independent piece
(`qmp_lab.parallel.run_tasks`). Each Ray size runs on a fresh local instance whose start, and its workers' first
import of the code, are timed apart and left out of the runs.

    .venv/bin/python tests/bench/bench_research_ray.py [--folds 40] [--symbols 100] [--days 5040] [--rounds 3] [--json]
"""

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from embedded_stack import machine

from qmp_lab.parallel import IN_PROCESS, Workers, run_tasks
from qmp_lab.verify import walk_forward
from qmp_lab.verify.core import StrategyTarget, VerifyContext

STRATEGY = "qmp_lab.strategies.ridge:RidgeReturns"


def synthetic_prices(symbols: int, days: int, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    returns = rng.standard_t(4, size=(days, symbols)) * 0.01 + 0.0002
    index = pd.bdate_range("2000-01-03", periods=days, tz="UTC")
    return pd.DataFrame(100.0 * np.cumprod(1.0 + returns, axis=0), index=index,
                        columns=[f"S{k:03d}" for k in range(symbols)])


def warm(_: None, item: int) -> int:
    """A worker's first import of the walk-forward's code (pandas, the lab), as every piece needs it."""
    import time as clock

    from qmp_lab.verify import walk_forward as loaded

    clock.sleep(0.5)  # long enough that every worker takes one
    return item + len(loaded.__name__)


def out_of_sample(workers: Workers, folds: int, prices: Any, folder: Path) -> tuple[float, dict[str, Any]]:
    ctx = VerifyContext(target=StrategyTarget(STRATEGY), out_dir=folder, workers=workers, options={"folds": folds})
    started = time.perf_counter()
    found = walk_forward.out_of_sample(ctx, prices, True, [])
    seconds = time.perf_counter() - started
    return seconds, {"metrics": found["metrics"], "oos": found["oos"].to_numpy().tolist()}


def same(a: Any, b: Any) -> bool:
    """Equal to the bit, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def main() -> None:
    import ray  # after qmp_lab.parallel, which sets how Ray starts its workers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=40)
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--days", type=int, default=5040)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    prices = synthetic_prices(args.symbols, args.days)
    cores = os.cpu_count() or 1
    sizes = sorted({1, 2, cores})
    folder = Path(tempfile.mkdtemp(prefix="qmp-bench-ray-"))
    seconds: dict[str, list[float]] = {"one process": []} | {f"ray {n}": [] for n in sizes}
    identical = True
    starts: list[float] = []
    baseline: dict[str, Any] | None = None
    for round_ in range(args.rounds):
        took, baseline_now = out_of_sample(IN_PROCESS, args.folds, prices, folder)
        seconds["one process"].append(took)
        baseline = baseline or baseline_now
        identical &= same(baseline_now, baseline)
        for n in sizes:
            started = time.perf_counter()
            ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)
            run_tasks(warm, None, list(range(n)), Workers(count=n))
            starts.append(time.perf_counter() - started)
            took, found = out_of_sample(Workers(count=n), args.folds, prices, folder)
            ray.shutdown()
            seconds[f"ray {n}"].append(took)
            identical &= same(found, baseline)
        print(f"\rround {round_ + 1}/{args.rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    one = statistics.median(seconds["one process"])
    pieces = (args.folds - 1) + math.comb(6, 2) + len(baseline["metrics"]["configurations"]) if baseline else 0
    result = {
        "folds": args.folds, "pieces": pieces, "rows": len(prices), "symbols": args.symbols, "machine": machine(),
        "seconds": {k: {"min": round(min(v), 2), "median": round(statistics.median(v), 2), "max": round(max(v), 2)}
                    for k, v in seconds.items()},
        "speed_up": {k: round(one / statistics.median(v), 2) for k, v in seconds.items() if k != "one process"},
        "ray_start_s": round(statistics.median(starts), 2), "identical": identical,
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(f"walk-forward of {STRATEGY}: {args.folds} folds, {pieces} pieces, {len(prices)} rows x {args.symbols} "
          f"symbols; load {result['machine']}")
    for key, s in result["seconds"].items():
        ratio = f"  speed-up {result['speed_up'][key]:.2f}x" if key in result["speed_up"] else ""
        print(f"  {key:12s} min {s['min']:7.2f} s  median {s['median']:7.2f} s  max {s['max']:7.2f} s{ratio}")
    print(f"  Ray's start and its workers' first import (not in the runs): {result['ray_start_s']} s; every number "
          f"identical: {identical}")


if __name__ == "__main__":
    main()

"""Incremental per-symbol risk on a new batch: every measure for 1,000 symbols, against recomputing from scratch.

Data: 1,000 symbols of fat-tailed returns (Student-t, 4 degrees of freedom, seeded); windows of 250 are
filled first, then `--batches` new batches are timed one by one.
- update: `SymbolRisk.update` (kernels/incremental.py), i.e. 7 methods x 3 levels of VaR and ES, realized
  vol and its ratio for every symbol, without GARCH refits; p50 / p99 per batch;
- refit: one symbol's GARCH(1,1) and Student-t fits and re-filter (the service spreads them over batches,
  `garch_max_refits_per_batch` per batch, default 1): per symbol, and the amortized batch cost;
- engine: `RiskEngine.on_bars` with a 1,000-symbol BarBatch (validation, price history, per-symbol update
  and the scheduled refit): what the service spends per batch;
- baseline, same data: the point kernel `var_es_methods_nb` on every symbol's window (what a
  non-incremental engine would run per batch), with GARCH parameters given (no fit), so like for like.

    .venv/bin/python tests/bench/bench_risk_incremental.py [--symbols 1000] [--batches 300] [--json]
"""

import argparse
import json
import time

import numpy as np

from qmp_core.config import RISK_DEFAULTS
from qmp_core.messages import BarBatch
from qmp_kernels.methods import all_methods, var_es_methods_nb
from qmp_risk.config import RiskSettings
from qmp_risk.engine import RiskEngine
from qmp_risk.engine.symbols import SymbolParams, SymbolRisk

WINDOW = 250
LEVELS = (0.95, 0.975, 0.99)


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n = args.symbols
    returns = np.random.default_rng(7).standard_t(4, size=(WINDOW + 20 + args.batches, n)) * 0.01
    params = SymbolParams(window=WINDOW, alphas=LEVELS, ewma_lambda=RISK_DEFAULTS.ewma_lambda,
                          evt_threshold=RISK_DEFAULTS.evt_threshold, vol_window=10,
                          vol_average_window=20, refit_every=10**9, max_refits_per_batch=0)
    risk = SymbolRisk(params)
    cols = risk.columns([f"S{j:04d}" for j in range(n)])
    for row in returns[: WINDOW + 20]:
        risk.update(cols, row)
    update = []
    for row in returns[WINDOW + 20:]:
        start = time.perf_counter()
        risk.update(cols, row)
        update.append(time.perf_counter() - start)
    risk.refit(np.arange(min(n, 4), dtype=np.int64))  # load the compiled code
    rows = np.arange(min(n, 100), dtype=np.int64)
    start = time.perf_counter()
    risk.refit(rows)
    refit_s = (time.perf_counter() - start) / len(rows)

    # the whole engine path: BarBatch -> validation -> history -> per-symbol update -> scheduled refit
    engine = RiskEngine(RiskSettings(var_window=WINDOW), _clock())
    symbols = [f"S{j:04d}" for j in range(n)]
    closes = 100.0 * np.cumprod(1.0 + returns, axis=0)
    on_bars = []
    for i, row in enumerate(closes):
        batch = BarBatch(venue="bench", ts_event=(i + 1) * 86_400 * 10**9, symbols=symbols, open=row.tolist(),
                         high=row.tolist(), low=row.tolist(), close=row.tolist(), volume=[1e6] * n)
        start = time.perf_counter()
        engine.on_bars(batch)
        if i >= WINDOW + 20:
            on_bars.append(time.perf_counter() - start)

    # baseline: recompute every symbol's measures from its window with the point kernel
    alphas = np.array(LEVELS)
    garch = np.array([1e-6, 0.08, 0.9])
    window = np.ascontiguousarray(returns[-WINDOW:].T)
    var_es_methods_nb(window[0], WINDOW, alphas, 0.94, 0.9, garch, all_methods())
    start = time.perf_counter()
    for j in range(n):
        var_es_methods_nb(window[j], WINDOW, alphas, 0.94, 0.9, garch, all_methods())
    recompute_s = time.perf_counter() - start

    update_p = percentiles(update)
    figures = {
        "symbols": n, "window": WINDOW, "levels": list(LEVELS), "methods": 7, "batches_timed": len(update),
        "update": update_p, "update_ns_per_symbol": update_p["p50_ms"] * 1e6 / n,
        "garch_refit_ms_per_symbol": refit_s * 1e3,
        "engine_on_bars": percentiles(on_bars),
        "recompute_point_kernels_ms": recompute_s * 1e3,
        "speedup_vs_recompute": recompute_s * 1e3 / update_p["p50_ms"],
        "state_mb": risk.nbytes() / 2**20,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"per-symbol risk, {n} symbols, window {WINDOW}, 7 methods x {len(LEVELS)} levels, {len(update)} batches")
    print(f"  incremental update      : p50 {update_p['p50_ms']:.3f} ms, p99 {update_p['p99_ms']:.3f} ms per batch "
          f"({figures['update_ns_per_symbol']:.0f} ns/symbol)")
    print(f"  GARCH + t refit         : {figures['garch_refit_ms_per_symbol']:.3f} ms per symbol "
          f"(1 per batch by default)")
    print(f"  engine.on_bars (all in) : p50 {figures['engine_on_bars']['p50_ms']:.3f} ms, "
          f"p99 {figures['engine_on_bars']['p99_ms']:.3f} ms per 1,000-symbol batch")
    print(f"  recompute, point kernel : {figures['recompute_point_kernels_ms']:.1f} ms per batch -> incremental is "
          f"{figures['speedup_vs_recompute']:.0f}x faster")
    print(f"  state                   : {figures['state_mb']:.1f} MB")


def _clock() -> object:
    from qmp_core.clock import TestClock

    return TestClock(0)


if __name__ == "__main__":
    main()

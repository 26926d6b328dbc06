"""Risk service memory: RSS after replaying 1,000 symbols x 2,520 days through its engine, against the bare imports.

A child process imports the risk service (FastStream, NATS client, asyncpg, OpenTelemetry, numba kernels:
what `python -m qmp_risk` loads), builds its `RiskService` with the default settings (per-symbol risk on,
250-day window), records RSS (the baseline: the service before any data), then feeds the engine one
1,000-symbol BarBatch per day for 2,520 days and a 50-position portfolio snapshot per day, and records
RSS and peak RSS again. No network: the engine is the service's whole state.

    .venv/bin/python tests/bench/bench_risk_memory.py [--symbols 1000] [--days 2520] [--json]
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
import psutil
from qmp_core.clock import NS_PER_DAY
from qmp_core.messages import BarBatch, PortfolioSnapshot
from qmp_risk.app import RiskService
from qmp_risk.config import RiskSettings

symbols, days = int(sys.argv[1]), int(sys.argv[2])
process = psutil.Process()
service = RiskService(RiskSettings())
engine = service.engine
baseline = process.memory_info().rss
names = [f"S{j:04d}" for j in range(symbols)]
held = names[:50]
rng = np.random.default_rng(3)
closes = 100.0 * np.ones(symbols)
start = time.perf_counter()
for day in range(days):
    closes *= 1.0 + rng.standard_t(4, symbols) * 0.01
    ts = (day + 1) * NS_PER_DAY
    row = closes.tolist()
    engine.on_bars(BarBatch(venue="bench", ts_event=ts, symbols=names, open=row, high=row, low=row, close=row,
                            volume=[1e6] * symbols))
    engine.on_portfolio(PortfolioSnapshot(strategy="bench", ts_event=ts, cash=0.0, equity=1e6, symbols=held,
                                          quantities=[1e6 / 50 / closes[j] for j in range(50)],
                                          prices=closes[:50].tolist()))
elapsed = time.perf_counter() - start
print(json.dumps({"baseline_rss_mb": baseline / 2**20, "rss_mb": process.memory_info().rss / 2**20,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "replay_s": elapsed, "per_day_ms": elapsed / days * 1e3,
                  "symbol_state_mb": engine.symbols.nbytes() / 2**20 if engine.symbols else 0.0,
                  "bar_rows_kept": engine.history.length}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--days", type=int, default=2520)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    done = subprocess.run([sys.executable, "-c", CHILD, str(args.symbols), str(args.days)], capture_output=True,
                          text=True, check=True)
    figures = {"symbols": args.symbols, "days": args.days, **json.loads(done.stdout.strip().splitlines()[-1])}
    figures["growth_mb"] = figures["rss_mb"] - figures["baseline_rss_mb"]
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"risk service, {args.symbols} symbols x {args.days} days replayed through its engine "
          f"({figures['per_day_ms']:.1f} ms per day: bars + a 50-position snapshot)")
    print(f"  RSS before data : {figures['baseline_rss_mb']:6.1f} MB (imports, kernels, settings)")
    print(f"  RSS after       : {figures['rss_mb']:6.1f} MB (peak {figures['peak_rss_mb']:.1f} MB), "
          f"+{figures['growth_mb']:.1f} MB; per-symbol state {figures['symbol_state_mb']:.1f} MB, "
          f"{figures['bar_rows_kept']} bar rows kept")


if __name__ == "__main__":
    main()

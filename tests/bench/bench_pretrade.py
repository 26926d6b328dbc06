"""Pre-trade controls: the cost per order with every limit on, against none, in the same run.

ORDERS candidate orders over SYMBOLS symbols (buys and sells, a book holding half the symbols) go through
`pre_trade` and, when they pass, `commit`, the way the execution engine checks one batch: once with every
limit on (max notional and quantity per order, price band, restricted symbols, available cash, max position
per symbol, gross exposure, order rate) set so that most orders pass, once with every limit off. Each is
timed over ROUNDS rounds; printed: microseconds per order (min/median/max) and the difference.

    .venv/bin/python tests/bench/bench_pretrade.py [--orders 10000] [--symbols 500] [--rounds 7] [--json]
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
import psutil

from qmp_execution.engine.config import EngineConfig
from qmp_execution.engine.pretrade import Candidate, PreTrade, RateLimiter, pre_trade

EVERY_LIMIT = {"max_order_notional": 50_000.0, "max_order_quantity": 5_000.0, "price_band": 0.5,
               "price_collar": 0.3, "restricted_symbols": frozenset({"S0007", "S0013"}),
               "max_position_notional": 200_000.0, "max_gross_exposure": 1e9, "max_order_rate": 1_000_000}
NO_LIMIT = {"max_order_notional": 0.0, "max_order_quantity": 0.0, "price_band": 0.0,
            "restricted_symbols": frozenset(), "max_position_notional": 0.0, "max_gross_exposure": 0.0,
            "max_order_rate": 0}


def workload(orders: int, symbols: int, seed: int = 5) -> tuple[list[tuple[str, float, float]], dict[str, float],
                                                                 dict[str, float]]:
    rng = np.random.default_rng(seed)
    names = [f"S{i:04d}" for i in range(symbols)]
    prices = rng.uniform(10.0, 300.0, symbols)
    picks = rng.integers(0, symbols, orders)
    quantities = rng.normal(0.0, 50.0, orders)
    held = {names[i]: float(rng.normal(0.0, 200.0)) for i in range(0, symbols, 2)}
    marks = {names[i]: float(prices[i]) for i in range(symbols)}
    return [(names[i], float(q), float(prices[i])) for i, q in zip(picks, quantities, strict=True)], held, marks


def run(limits: dict, orders: list[tuple[str, float, float]], held: dict[str, float],
        marks: dict[str, float]) -> tuple[float, int]:
    config = EngineConfig(**limits)
    candidates = [Candidate(symbol, 0, quantity, price, 0.01, [], 0.0001, allowed=quantity)
                  for symbol, quantity, price in orders]
    start = time.perf_counter()
    ctx = PreTrade(config=config, previous=marks, available=1e12, fee=0.0001, now_ns=1,
                   rate=RateLimiter(config.max_order_rate, 1_000_000_000), exposure=dict(held), marks=dict(marks),
                   reference=marks if config.price_collar else {})
    passed = 0
    for candidate in candidates:
        if pre_trade(candidate, ctx) is None:
            ctx.commit(candidate)
            passed += 1
    return (time.perf_counter() - start) / len(orders) * 1e6, passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    orders, held, marks = workload(args.orders, args.symbols)
    timings: dict[str, list[float]] = {"every_limit": [], "no_limit": []}
    passed = {}
    for _ in range(args.rounds):
        for name, limits in (("every_limit", EVERY_LIMIT), ("no_limit", NO_LIMIT)):
            micros, passed[name] = run(limits, orders, held, marks)
            timings[name].append(micros)
    spread = {name: {"min": round(min(v), 3), "median": round(statistics.median(v), 3), "max": round(max(v), 3)}
              for name, v in timings.items()}
    result = {"orders": args.orders, "symbols": args.symbols, "rounds": args.rounds,
              "load_average": [round(x, 2) for x in psutil.getloadavg()], "us_per_order": spread,
              "orders_passed": passed,
              "added_us_per_order": round(spread["every_limit"]["median"] - spread["no_limit"]["median"], 3)}
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(f"{args.orders:,} orders over {args.symbols} symbols, {args.rounds} rounds, load {result['load_average']}")
    for name, s in spread.items():
        print(f"  {name:12s} µs per order: min {s['min']:.3f}  median {s['median']:.3f}  max {s['max']:.3f}  "
              f"({passed[name]:,} passed)")
    print(f"  every limit costs {result['added_us_per_order']:.3f} µs more per order (target <= 20 µs)")


if __name__ == "__main__":
    main()

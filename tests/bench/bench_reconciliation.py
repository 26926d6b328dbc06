"""Reconciliation after a restart: execution stops with `--orders` orders working at the venue, the venue fills
them all while it is down, and it starts again; how long until every fill is booked and its report is clean.

Real parts on loopback: embedded NATS and PostgreSQL, and the execution service trading through alpaca-py
against a fake Alpaca server. Each round: a fresh strategy holds every symbol from its second bar, so that
bar sends one order per symbol, which works at the venue (the fake fills nothing yet); the service stops;
the venue fills every order; the service starts again (its books recovered from the last snapshot, the
orders still working there) and asks the venue about each order, books what filled, compares positions
and publishes a `ReconciliationReport`. The time is from the start of the restart to that report, which
must be clean (`action: clean`) with every order's fill booked once.

Baseline in the same run: a restart of the same service with nothing left to reconcile (the same books,
no working order), so the ratio is what 1,000 orders' worth of recovery adds to a restart.

    .venv/bin/python tests/bench/bench_reconciliation.py [--orders 1000] [--rounds 3] [--json]
"""

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

from qmp_core import bus, subjects
from qmp_core.clock import NS_PER_DAY
from qmp_core.messages import BarBatch, ReconciliationReport, codec, wire
from qmp_execution.app import ExecutionService, settings_from
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import settings_for
from qmp_venues.fake_alpaca import FakeAlpaca

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "support"))
sys.path.insert(0, str(HERE))
from embedded_stack import embedded_stack, machine, summary  # noqa: E402

WAIT_S = 120.0


def bar(venue: str, day: int, symbols: list[str]) -> BarBatch:
    closes = [100.0 + i * 0.01 for i in range(len(symbols))]
    return BarBatch(venue=venue, ts_event=(day + 1) * NS_PER_DAY, symbols=symbols, open=closes, high=closes,
                    low=closes, close=closes, volume=[1e9] * len(symbols), seq=day)


async def restart_until_report(service_for: object, reports: object, strategy: str) -> tuple[float, object]:
    """Start a new service process-equivalent; return the seconds to its first report and the report."""
    started = time.perf_counter()
    service = service_for()  # type: ignore[operator]
    await service.app.start()
    message = await reports.next_msg(timeout=WAIT_S)  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - started
    report = codec(ReconciliationReport).decode(message.data)
    return elapsed, (service, report)


async def one_round(credentials: NatsCredentials, database_url: str, orders: int) -> tuple[float, float, int]:
    """Return (seconds to a clean report after recovering `orders` fills, seconds for a restart with nothing
    to recover, fills booked at the restart)."""
    strategy = venue = f"r{uuid.uuid4().hex[:8]}"
    symbols = [f"S{i:04d}" for i in range(orders)]
    fake = FakeAlpaca(prices=dict.fromkeys(symbols, 100.0), cash=1e12)
    fake.behaviour.fill_delay_s = 1e9  # every order works until the venue is told to fill
    await fake.start()
    settings = settings_from(
        settings_for(credentials, "execution", database_url), clock="live", venues=[venue],
        strategies=f"{strategy}=qmp_test_strategies:EveryBarHolder", execution_instance=strategy,
        min_order_notional=0.0, participation_limit=0.0, es_budget=0.0, price_band=0.0, broker="alpaca",
        alpaca_api_key=fake.key, alpaca_secret_key=fake.secret, alpaca_url=fake.url, alpaca_fill_wait_s=0.0,
        reconcile_policy="report", reconcile_interval_s=0.0)
    collector = await credentials.connect("collector")
    operator = await credentials.connect("operator")
    reports = await operator.subscribe(subjects.reconciliation_reports(strategy))
    snapshots = await operator.subscribe(subjects.portfolio(strategy))
    try:
        _, (service, _) = await restart_until_report(lambda: ExecutionService(settings), reports, strategy)
        for day in (0, 1):
            data, content_type = wire(bar(venue, day, symbols))
            await collector.jetstream().publish(subjects.bars(venue), data, headers={"Content-Type": content_type})
            await snapshots.next_msg(timeout=WAIT_S)
        if len(fake.open_orders()) != orders:
            raise RuntimeError(f"{len(fake.open_orders())} orders working at the venue, not {orders}")
        await service.app.stop()
        fake.fill_all()  # the market fills every order while execution is down
        recovered_s, (service, report) = await restart_until_report(lambda: ExecutionService(settings), reports,
                                                                    strategy)
        fills = service.handler.reconciled_fills if service.handler else 0
        if report.action != "clean" or fills != orders:
            raise RuntimeError(f"not clean after the restart: {report.action} {report.reason}, {fills} fills")
        await service.app.stop()
        baseline_s, (service, again) = await restart_until_report(lambda: ExecutionService(settings), reports,
                                                                  strategy)
        if again.action != "clean":
            raise RuntimeError(f"baseline restart not clean: {again.reason}")
        await service.app.stop()
        return recovered_s, baseline_s, fills
    finally:
        await collector.close()
        await operator.close()
        await fake.stop()


async def run(credentials: NatsCredentials, database_url: str, orders: int, rounds: int) -> dict[str, list[float]]:
    admin = await credentials.connect("operator")
    await bus.declare(admin.jetstream())
    await admin.close()
    recovered, baseline = [], []
    for _ in range(rounds):
        recovered_s, baseline_s, _fills = await one_round(credentials, database_url, orders)
        recovered.append(recovered_s)
        baseline.append(baseline_s)
    return {"recovered_s": recovered, "baseline_s": baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=1000, help="orders filled at the venue while execution is down")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with embedded_stack("qmp-bench-reconcile-") as (credentials, database_url):
        figures = asyncio.run(run(credentials, database_url, args.orders, args.rounds))
    recovered, baseline = summary(figures["recovered_s"]), summary(figures["baseline_s"])
    result = {"orders": args.orders, "rounds": args.rounds, "venue": "alpaca (fake)",
              "restart_to_clean_report_s": recovered, "baseline_restart_s": baseline,
              "ratio_p50": recovered["p50"] / baseline["p50"], **machine()}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"reconciliation after a restart, {args.orders} orders filled at the venue while execution was down, "
          f"{args.rounds} rounds (load {result['load_1m']:.2f} on {result['cpus']:.0f} CPUs)")
    for name, figures_ in (("restart → clean report, fills booked", recovered),
                           ("baseline: restart with nothing to book", baseline)):
        print(f"  {name:<40} min {figures_['min']:6.2f} s   median {figures_['p50']:6.2f} s   "
              f"max {figures_['max']:6.2f} s")
    print(f"  ratio at the median: {result['ratio_p50']:.1f}x")


if __name__ == "__main__":
    main()

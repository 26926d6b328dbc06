"""The kill switch: from `qmp kill ALL` to both venues' confirmation, with working orders at two venues.

Real parts on loopback: embedded NATS and PostgreSQL, the deployer, and two execution services, one per
venue: one trades through alpaca-py against a fake Alpaca server, the other through ccxt against a fake
Binance Spot API; both venues keep every order working. ccxt spaces its requests to the exchange's published
rate (Binance: 50 ms) unless `--exchange-rate-limit-ms` says otherwise. Each
round publishes a bar to both venues, waits until every order is working at its venue (`--orders` in all,
split over the two), then runs what `qmp kill ALL` runs (`kill_and_report`): the command, the deployer's
halt, each execution's withdrawal and cancels at its venue, and the wait for both KillReports. It then
resumes and goes again.

Baseline in the same run: a plain halt of the same stack (the command to the deployer's reply), so the
ratio says what withdrawing the orders at the venues adds to stopping new ones.

    .venv/bin/python tests/bench/bench_kill_switch.py [--orders 100] [--rounds 20] [--exchange-rate-limit-ms 0]
        [--json]
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
from qmp_core.messages import BarBatch, wire
from qmp_deployer.app import create_app as create_deployer
from qmp_execution.app import ExecutionService, settings_from
from qmp_ops.cli.control import kill_and_report, send_control
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import operator_connection, settings_for
from qmp_venues.fake_alpaca import FakeAlpaca
from qmp_venues.fake_exchange import FakeExchange

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "support"))
sys.path.insert(0, str(HERE))
from embedded_stack import embedded_stack, machine, summary  # noqa: E402


def bar(venue: str, day: int, symbols: list[str]) -> BarBatch:
    closes = [100.0 + (day % 7) + i * 0.01 for i in range(len(symbols))]
    return BarBatch(venue=venue, ts_event=(day + 1) * NS_PER_DAY, symbols=symbols, open=closes, high=closes,
                    low=closes, close=closes, volume=[1e7] * len(symbols), seq=day)


async def wait_for(condition: object, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


async def run(credentials: NatsCredentials, database_url: str, orders: int, rounds: int,
              rate_limit_ms: float) -> dict:
    per_venue = orders // 2
    symbols = [f"S{i:03d}" for i in range(per_venue)]
    alpaca = FakeAlpaca(prices=dict.fromkeys(symbols, 100.0), cash=1e12)
    exchange = FakeExchange(markets={f"{s}USDT": (s, "USDT") for s in symbols}, balances={"USDT": 1e12},
                            prices={f"{s}USDT": 100.0 for s in symbols})
    fakes = {"venue-a": alpaca, "venue-b": exchange}
    universes = {"venue-a": symbols, "venue-b": [f"{s}/USDT" for s in symbols]}  # ccxt's symbols
    for fake in fakes.values():
        fake.behaviour.fill_delay_s = 1e9  # every order works until withdrawn
        await fake.start()
    admin = await credentials.connect("operator")
    await bus.declare(admin.jetstream())
    deployer = create_deployer(settings_for(credentials, "deployer", database_url))
    await deployer.start()
    services = []
    venues = {"venue-a": {"broker": "alpaca", "alpaca_api_key": alpaca.key, "alpaca_secret_key": alpaca.secret,
                          "alpaca_url": alpaca.url, "alpaca_fill_wait_s": 0.0},
              "venue-b": {"broker": "exchange", "exchange_api_key": exchange.key,
                          "exchange_secret_key": exchange.secret, "exchange_url": exchange.url,
                          "exchange_fill_wait_s": 0.0, "exchange_rate_limit_ms": rate_limit_ms}}
    for venue, broker in venues.items():
        strategy = f"k{venue[-1]}-{uuid.uuid4().hex[:6]}"
        service = ExecutionService(settings_from(
            settings_for(credentials, "execution", database_url), clock="live", venues=[venue],
            strategies=f"{strategy}=qmp_test_strategies:EveryBarHolder", execution_instance=venue.replace("-", ""),
            min_order_notional=0.0, participation_limit=0.0, es_budget=0.0, price_band=0.0, **broker))
        await service.app.start()
        services.append(service)
    collector = await credentials.connect("collector")
    connection = operator_connection(credentials)
    kills, halts, venue_ms = [], [], []
    try:
        for day in range(rounds + 1):
            for venue in fakes:
                data, content_type = wire(bar(venue, day, universes[venue]))
                await collector.jetstream().publish(subjects.bars(venue), data,
                                                    headers={"Content-Type": content_type})
            if day == 0:
                continue  # the strategy's first bar warms it up
            await wait_for(lambda: all(len(f.open_orders()) == per_venue for f in fakes.values()),
                           "orders working at both venues")
            started = time.perf_counter()
            reply, reports, silent = await kill_and_report(connection, subjects.ALL_STRATEGIES, False, "bench")
            kills.append((time.perf_counter() - started) * 1e3)
            if not reply.get("accepted") or silent or not all(r.confirmed for r in reports) or len(reports) != 2:
                raise RuntimeError(f"kill not confirmed: {reply} {reports} silent={silent}")
            if any(f.open_orders() for f in fakes.values()):
                raise RuntimeError("orders still open at a venue after a confirmed kill")
            venue_ms.extend(r.elapsed_ms for r in reports)
            started = time.perf_counter()
            halted = await send_control(connection, subjects.ALL_STRATEGIES, {"command": "halt", "reason": "bench"})
            halts.append((time.perf_counter() - started) * 1e3)
            resumed = await send_control(connection, subjects.ALL_STRATEGIES, {"command": "resume"})
            if not (halted.get("accepted") and resumed.get("accepted")):
                raise RuntimeError(f"halt / resume refused: {halted} {resumed}")
    finally:
        await collector.close()
        for service in services:
            await service.app.stop()
        await deployer.stop()
        await admin.close()
        for fake in fakes.values():
            await fake.stop()
    return {"kill_ms": kills, "halt_ms": halts, "venue_ms": venue_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=100, help="working orders in all, over two venues")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--exchange-rate-limit-ms", type=float, default=0.0,
                        help="ccxt's spacing of requests to the exchange (0: the exchange's published rate)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with embedded_stack("qmp-bench-kill-") as (credentials, database_url):
        figures = asyncio.run(run(credentials, database_url, args.orders, args.rounds, args.exchange_rate_limit_ms))
    kill, halt, venue = summary(figures["kill_ms"]), summary(figures["halt_ms"]), summary(figures["venue_ms"])
    result = {
        "orders": args.orders, "venues": ["alpaca", "binance"], "rounds": args.rounds,
        "exchange_rate_limit_ms": args.exchange_rate_limit_ms or "binance's own (50)",
        "kill_ms": kill, "venue_ms": venue, "halt_ms": halt,
        "ratio_p50_kill_over_halt": kill["p50"] / halt["p50"],
        **machine(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"kill switch, {args.orders} working orders over Alpaca and Binance (fakes), {args.rounds} rounds "
          f"(load {result['load_1m']:.2f} on {result['cpus']} CPUs)")
    for name, figures_ in (("qmp kill ALL → both venues confirmed", kill),
                           ("  of which execution at its venue", venue), ("baseline: halt → deployer reply", halt)):
        print(f"  {name:<38} p50 {figures_['p50']:8.1f} ms   p99 {figures_['p99']:8.1f} ms   "
              f"(min {figures_['min']:.1f}, max {figures_['max']:.1f})")
    print(f"  kill / halt at p50: {result['ratio_p50_kill_over_halt']:.1f}x")


if __name__ == "__main__":
    main()

"""The dashboard with 50 strategies and 1,000 symbols, in headless Chromium: time to first render, and the time
from a trading state published on the bus to the page showing it, quiet and while every strategy's book and
risk snapshot stream in; next to the bus's own delivery of the same message to a plain subscriber.

Embedded NATS and PostgreSQL (TLS); the buckets and streams filled as the services would (each by its own
identity): a trading-state entry, a risk snapshot and a book of 1,000 positions per strategy. Printed:
min / median / max of the rounds of each figure, the page's latency over the bus's, the machine's load.

    .venv/bin/python tests/bench/bench_dashboard.py [--strategies 50] [--symbols 1000] [--updates 20]
        [--rounds 3] [--json]
"""

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from aiohttp import web
from embedded_stack import embedded_stack, machine

from qmp_core import bus, subjects
from qmp_core.messages import PortfolioSnapshot, RiskSnapshot, TradingState, encode
from qmp_ops.dashboard import create_app
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.runtime.ports import free_port
from qmp_ops.runtime.supervisor import Connection
from qmp_ops.testing import chromium

LOAD_RATE_HZ = 4.0  # books and risk snapshots per strategy per second while the page is under load


def book(strategy: str, symbols: int, ts: int) -> PortfolioSnapshot:
    names = [f"S{k:04d}" for k in range(symbols)]
    return PortfolioSnapshot(strategy=strategy, ts_event=ts, cash=1e5, equity=1e6 + ts % 1000,
                             symbols=names, quantities=[10.0] * symbols, prices=[50.0 + k % 7 for k in range(symbols)])


def risk(strategy: str, ts: int) -> RiskSnapshot:
    measures = {f"{m}_99": 0.02 for m in ("historical", "normal", "student_t", "cornish_fisher", "fhs_ewma", "evt")}
    return RiskSnapshot(strategy=strategy, ts_event=ts, equity=1e6, var=measures, es=measures, drawdown_24h=0.01,
                        drawdown_max=0.05, volatility_ratio=1.0, breakers=[])


async def fill(credentials: NatsCredentials, strategies: list[str], symbols: int) -> None:
    operator = await credentials.connect("operator")
    await bus.declare(operator.jetstream())
    await operator.close()
    deployer, risk_nc, execution = [await credentials.connect(user) for user in ("deployer", "risk", "execution")]
    kv = await bus.control_bucket(deployer.jetstream())
    for name in strategies:
        await kv.put(subjects.control_key(name, "deployer"), encode(TradingState(strategy=name)))
        await risk_nc.jetstream().publish(subjects.snapshot(name), encode(risk(name, 1)))
        await execution.jetstream().publish(subjects.portfolio(name), encode(book(name, symbols, 1)))
    for nc in (deployer, risk_nc, execution):
        await nc.close()


async def load(credentials: NatsCredentials, strategies: list[str], symbols: int, stop: asyncio.Event) -> int:
    """Publish every strategy's book and risk snapshot LOAD_RATE_HZ times a second until `stop`."""
    risk_nc, execution = await credentials.connect("risk"), await credentials.connect("execution")
    sent, ts = 0, 2
    payloads = {name: encode(book(name, symbols, 2)) for name in strategies}
    try:
        while not stop.is_set():
            started = time.monotonic()
            for name in strategies:
                await execution.publish(subjects.portfolio(name), payloads[name])
                await risk_nc.publish(subjects.snapshot(name), encode(risk(name, ts)))
                sent += 2
            ts += 1
            await asyncio.sleep(max(0.0, 1.0 / LOAD_RATE_HZ - (time.monotonic() - started)))
    finally:
        await risk_nc.close()
        await execution.close()
    return sent


async def one_round(credentials: NatsCredentials, database_url: str, strategies: list[str], symbols: int,
                    updates: int, executable: str, round_: int) -> dict[str, float]:
    from playwright.async_api import async_playwright

    user, password = credentials.for_user("operator")
    stack = Connection(credentials.url, database_url, "", user, password, tls_ca=credentials.tls_ca)
    runner = web.AppRunner(create_app(stack))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    deployer = await credentials.connect("deployer")
    watcher = await credentials.connect("operator")
    out: dict[str, float] = {}
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1600, "height": 900})
                await page.goto(url + "/login")
                await page.fill("#user", user)
                await page.fill("#password", password)
                started = time.monotonic()
                await page.click("button[type=submit]")
                await page.wait_for_function(f"document.querySelectorAll('#strategies tbody tr').length >= "
                                             f"{len(strategies)}", timeout=60_000)
                out["first_render_s"] = time.monotonic() - started
                await page.locator("#live.on").wait_for(timeout=10_000)

                arrivals: dict[str, float] = {}  # reason -> when a plain subscriber got the state carrying it

                async def on_state(msg: object) -> None:
                    reason = json.loads(msg.data).get("reason", "")  # type: ignore[attr-defined]
                    arrivals.setdefault(reason, time.monotonic())

                await watcher.subscribe(subjects.STATE_ALL, cb=on_state, pending_msgs_limit=-1)
                await watcher.flush()

                async def latencies(label: str) -> None:
                    page_s, bus_s = [], []
                    for k in range(updates):
                        name = strategies[k % len(strategies)]
                        reason = f"{label}-{round_}-{k}"  # never one an earlier round left on the page
                        sent = time.monotonic()
                        await deployer.publish(subjects.state(name), encode(TradingState(strategy=name,
                                                                                         status="HALTED",
                                                                                         reason=reason)))
                        await page.locator(f'tr[data-strategy="{name}"] .reason').filter(
                            has_text=reason).wait_for(timeout=10_000)
                        page_s.append(time.monotonic() - sent)
                        for _ in range(200):  # the plain subscriber has it by now, or within a moment
                            if reason in arrivals:
                                break
                            await asyncio.sleep(0.01)
                        bus_s.append(arrivals[reason] - sent)
                    out[f"{label}_page_ms"] = 1000 * statistics.median(page_s)
                    out[f"{label}_page_max_ms"] = 1000 * max(page_s)
                    out[f"{label}_bus_ms"] = 1000 * statistics.median(bus_s)

                await latencies("quiet")
                stop = asyncio.Event()
                loading = asyncio.create_task(load(credentials, strategies, symbols, stop))
                await asyncio.sleep(1.0)
                await latencies("loaded")
                stop.set()
                out["load_messages"] = float(await loading)
            finally:
                await browser.close()
    finally:
        await deployer.close()
        await watcher.close()
        await runner.cleanup()
    return out


async def main_async(args: argparse.Namespace, credentials: NatsCredentials, database_url: str,
                     round_: int) -> dict[str, float]:
    strategies = [f"strat{k:02d}" for k in range(args.strategies)]
    await fill(credentials, strategies, args.symbols)
    return await one_round(credentials, database_url, strategies, args.symbols, args.updates, chromium(), round_)


def summarise(args: argparse.Namespace, rounds: list[dict[str, float]]) -> dict:
    spread = {key: {"min": round(min(r[key] for r in rounds), 2),
                    "median": round(statistics.median(r[key] for r in rounds), 2),
                    "max": round(max(r[key] for r in rounds), 2)} for key in rounds[0]}
    return {"strategies": args.strategies, "symbols": args.symbols, "updates": args.updates, "machine": machine(),
            "figures": spread,
            "loaded_page_over_bus": round(spread["loaded_page_ms"]["median"] / max(spread["loaded_bus_ms"]["median"],
                                                                                  1e-3), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", type=int, default=50)
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rounds = []
    for round_ in range(args.rounds):  # each round on servers of its own: no round inherits another's traffic
        with embedded_stack("qmp-bench-dashboard-") as (credentials, database_url):
            rounds.append(asyncio.run(main_async(args, credentials, database_url, round_)))
        print(f"\rround {round_ + 1}/{args.rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    result = summarise(args, rounds)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(f"dashboard: {result['strategies']} strategies x {result['symbols']} symbols, {result['updates']} state "
          f"updates a round, load {result['machine']}")
    for key, s in result["figures"].items():
        print(f"  {key:20s} min {s['min']:>10,.2f}  median {s['median']:>10,.2f}  max {s['max']:>10,.2f}")
    print(f"  the page's latency under load over the bus's: {result['loaded_page_over_bus']}x (goal: on screen "
          "within 1 s)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()

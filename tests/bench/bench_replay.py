"""The whole stack replaying SYMBOLS × DAYS synthetic daily bars, against its own engine alone.

The market: SYMBOLS instruments over DAYS business days, each with returns that carry over from one day to
the next (an AR(1) with its own coefficient, Student-t shocks), written as the collector's wide CSV. The
strategy: time-series momentum per instrument (`qmp_test_strategies.InstrumentMomentum`: hold the symbols
whose last 20 days rose), so most days make orders. The stack (collector, risk, execution, deployer as
processes on embedded NATS and PostgreSQL, replay clock, lockstep) replays the file; the run is timed from
the first risk snapshot to the last. Printed: bars per second, orders per second, CPU per bar (the four
services, nats-server and PostgreSQL), peak resident memory per process. The baseline, in this process: the
execution engine alone on the same batches (no bus, no database, no risk); the ratio says what the rest of
the stack costs. With `--nautilus PYTHON` (a Python that has `nautilus_trader` installed; it is never a
dependency of the stack) NautilusTrader's BacktestEngine runs the same file and rule in the same run
(`nautilus_replay.py`), and the stack's rate is given against its run-only rate.

    .venv/bin/python tests/bench/bench_replay.py [SYMBOLS] [DAYS] [--nautilus PYTHON] [--order-events per_order]
                                                 [--json]
"""

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import numpy as np
import pandas as pd
import psutil

from qmp_core import bus, subjects
from qmp_core.clock import ReplayClock
from qmp_core.messages import BatchEvents, codec
from qmp_ops.runtime.supervisor import Stack, StackOptions

HERE = Path(__file__).resolve().parent
SUPPORT = HERE.parent / "support"
STRATEGY, VENUE = "benchreplay", "benchreplay"
STALL_S = 120.0
SAMPLE_S = 0.5


def market(symbols: int, days: int, seed: int = 7) -> pd.DataFrame:
    """Return daily closes with per-instrument momentum: r_t = phi_i r_{t-1} + shock, phi_i in [0.05, 0.3]."""
    rng = np.random.default_rng(seed)
    phi = rng.uniform(0.05, 0.3, symbols)
    shocks = rng.standard_t(4, (days, symbols)) * rng.uniform(0.008, 0.02, symbols) / np.sqrt(2.0)
    returns = np.empty_like(shocks)
    returns[0] = shocks[0]
    for t in range(1, days):
        returns[t] = phi * returns[t - 1] + shocks[t]
    closes = 100.0 * np.exp(np.cumsum(returns, axis=0))
    frame = pd.DataFrame(closes, columns=[f"S{i:04d}" for i in range(symbols)])
    frame.insert(0, "date", pd.bdate_range("2010-01-04", periods=days).strftime("%Y-%m-%d"))
    return frame


def engine_alone(path: Path) -> dict[str, float]:
    """Bars per second of the execution engine alone on the file's batches, in this process."""
    sys.path.insert(0, str(SUPPORT))
    from qmp_test_strategies import InstrumentMomentum

    from qmp_collector.sources import FileSource  # the collector's own reading of the file
    from qmp_execution.engine import EngineConfig, ExecutionEngine

    batches = list(FileSource(path, VENUE))
    clock = ReplayClock()
    engine = ExecutionEngine({STRATEGY: InstrumentMomentum()}, EngineConfig(), clock)
    orders = 0
    start = time.perf_counter()
    for batch in batches:
        clock.observe(batch.ts_event)
        result = engine.process(batch)
        orders += sum(len(r.decisions) for r in result.results.values())
    seconds = time.perf_counter() - start
    bars = sum(len(b.symbols) for b in batches)
    return {"seconds": round(seconds, 3), "bars_per_s": round(bars / seconds, 1), "decisions": orders}


class Sampler:
    """CPU time and peak resident memory of the stack's processes (PostgreSQL with its backends)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.peak_mb: dict[str, float] = {}
        self.cpu_start = self.cpu()

    def processes(self) -> dict[str, list[psutil.Process]]:
        out = {name: [psutil.Process(p.pid)] for name, p in self.stack.processes.items()}
        if self.stack.nats is not None and self.stack.nats.process is not None:
            out["nats-server"] = [psutil.Process(self.stack.nats.process.pid)]
        if self.stack.postgres is not None and self.stack.postgres.process is not None:
            root = psutil.Process(self.stack.postgres.process.pid)
            out["postgres"] = [root, *root.children(recursive=True)]
            front = getattr(self.stack.postgres, "front", None)
            if front is not None:  # the TLS front the services' connections go through (qmp up's default)
                out["postgres-tls"] = [psutil.Process(front.pid)]
        return out

    def cpu(self) -> float:
        return sum(self.cpu_by_process().values())

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds so far of each process (PostgreSQL: with its backends)."""
        out: dict[str, float] = {}
        for name, group in self.processes().items():
            out[name] = 0.0
            for process in group:
                try:
                    times = process.cpu_times()
                    out[name] += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
        return out

    def sample(self) -> None:
        for name, group in self.processes().items():
            rss = 0.0
            for process in group:
                try:
                    rss += process.memory_info().rss / 2**20
                except psutil.NoSuchProcess:
                    pass
            self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), round(rss, 1))


async def snapshots(js: nats.js.JetStreamContext) -> int:
    subject = subjects.snapshot(STRATEGY)
    info = await js.stream_info(subjects.STREAM_RISK, subjects_filter=subject)
    return info.state.subjects.get(subject, 0) if info.state.subjects else 0


async def count(js: nats.js.JetStreamContext, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return info.state.subjects.get(subject, 0) if info.state.subjects else 0


async def follow(stack: Stack, days: int) -> dict[str, float]:
    """Start the services, wait for every day's risk snapshot; time from the first to the last."""
    nc = await stack.connection.connect()
    js = nc.jetstream()
    await stack.start_services()
    sampler = Sampler(stack)
    first = last = None
    cpu_first: dict[str, float] = {}
    seen, moved = 0, time.monotonic()
    while seen < days:
        sampler.sample()
        now_seen = await snapshots(js)
        now = time.monotonic()
        if now_seen > seen:
            seen, moved = now_seen, now
            if first is None:
                first, cpu_first = time.perf_counter(), sampler.cpu_by_process()
            last = time.perf_counter()
            print(f"\r{seen}/{days} days", end="", file=sys.stderr, flush=True)
        if now - moved > STALL_S:
            raise RuntimeError(f"the replay stalled at {seen} of {days} days; logs in {stack.run_dir}")
        await asyncio.sleep(SAMPLE_S if seen < days - 5 else 0.02)
    print(file=sys.stderr)
    cpu = {name: seconds - cpu_first.get(name, 0.0) for name, seconds in sampler.cpu_by_process().items()}
    orders = await count(js, subjects.STREAM_EXEC, subjects.orders(STRATEGY))
    fills = await count(js, subjects.STREAM_EXEC, subjects.fills(STRATEGY))
    batches = codec(BatchEvents)
    async for stored in bus.read_stream(nc, subjects.STREAM_EXEC, subjects.batch_events(STRATEGY)):
        events = batches.decode(stored.data)  # `order_events = per_batch`: a batch's orders and fills in one
        orders, fills = orders + len(events.decisions), fills + len(events.fills)
    await nc.close()
    assert first is not None and last is not None
    return {"seconds": last - first, "cpu_seconds": sum(cpu.values()), "cpu_by_process": cpu, "orders": orders,
            "fills": fills,
            "peak_rss_mb": sampler.peak_mb}


def nautilus(python: str, path: Path) -> dict:
    """Run NautilusTrader on the file in a process of its own Python; return its figures."""
    done = subprocess.run([python, str(HERE / "nautilus_replay.py"), str(path)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"nautilus_replay.py failed with {python}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(symbols: int, days: int, nautilus_python: str = "", order_events: str = "per_batch") -> dict:
    home = Path(tempfile.mkdtemp(prefix="qmp-bench-replay-"))
    path = home / "market.csv"
    market(symbols, days).to_csv(path, index=False)
    alone = engine_alone(path)
    anchor = nautilus(nautilus_python, path) if nautilus_python else None
    stack = Stack(StackOptions(home=home, clock="replay", share_connection=False, service_env={
        "collector": {"QMP_SOURCE": "file", "QMP_FILE": str(path), "QMP_VENUE": VENUE, "QMP_REPLAY_RATE": "0",
                      "QMP_LOCKSTEP_STRATEGY": STRATEGY},
        "execution": {"QMP_STRATEGIES": f"{STRATEGY}=qmp_test_strategies:InstrumentMomentum",
                      "PYTHONPATH": str(SUPPORT), "QMP_ORDER_EVENTS": order_events},
    }))
    try:
        stack.start_servers()
        measured = asyncio.run(follow(stack, days))
    finally:
        stack.stop()
    bars = symbols * (days - 1)  # timed from the first snapshot: the first day's bars are before it
    stack_rate = bars / measured["seconds"]
    services = {k: v for k, v in measured["peak_rss_mb"].items()
                if k not in ("nats-server", "postgres", "postgres-tls")}
    result = {
        "symbols": symbols, "days": days, "order_events": order_events,
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
        "stack": {"seconds": round(measured["seconds"], 2), "bars_per_s": round(stack_rate, 1),
                  "orders": measured["orders"], "fills": measured["fills"],
                  "orders_per_s": round(measured["orders"] / measured["seconds"], 1),
                  "cpu_us_per_bar": round(measured["cpu_seconds"] / bars * 1e6, 1),
                  "cpu_us_per_bar_by_process": {name: round(seconds / bars * 1e6, 1)
                                                for name, seconds in sorted(measured["cpu_by_process"].items())},
                  "peak_rss_mb": measured["peak_rss_mb"],
                  "services_peak_rss_mb": round(sum(services.values()), 1)},
        "engine_alone": alone,
        "stack_over_engine_alone": round(stack_rate / alone["bars_per_s"], 4),
    }
    if anchor is not None:
        result["nautilus"] = anchor
        result["stack_over_nautilus_run"] = round(stack_rate / anchor["bars_per_s_run"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("symbols", type=int, nargs="?", default=200)
    parser.add_argument("days", type=int, nargs="?", default=2520)
    parser.add_argument("--nautilus", metavar="PYTHON", default="",
                        help="a Python with nautilus_trader installed: run its BacktestEngine on the same data")
    parser.add_argument("--order-events", choices=("per_batch", "per_order"), default="per_batch",
                        help="execution's orders and fills as one message per batch (as the demo replays) or one each")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.days < 30 or args.symbols < 1:
        parser.error("at least 1 symbol and 30 days (the strategy looks back 20)")
    result = run(args.symbols, args.days, args.nautilus, args.order_events)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    for name, value in result.items():
        print(f"{name:26s} {value}")


if __name__ == "__main__":
    main()

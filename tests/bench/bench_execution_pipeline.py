"""Targets → orders → fills through NATS for a 1,000-symbol universe: batches per second and latency.

Runs the execution service as a process on embedded servers (or QMP_NATS_URL / QMP_DATABASE_URL) with a
strategy that re-targets every symbol on every batch, so each batch makes N orders and N fills, written
to PostgreSQL with the equity curve and positions. The benchmark publishes one-minute batches as the
collector does (JetStream, `Nats-Msg-Id`) and listens to the fills:
- latency: one batch at a time, from the publish to the last fill of that batch published (p50/p99);
- throughput: `--batches` batches published back to back; batches per second until the last fill of the
  last batch is published.
Baseline in the same run: the engine alone in this process on the same batches (no bus, no JSON, no
database); the ratios say what the service around it costs.

    .venv/bin/python tests/bench/bench_execution_pipeline.py [--symbols 1000] [--batches 200] [--json]
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd

from qmp_core import subjects
from qmp_core.bus import headers_for
from qmp_core.clock import NS_PER_DAY, NS_PER_SECOND, ReplayClock
from qmp_core.messages import BarBatch, encode
from qmp_core.strategy import BaseStrategy
from qmp_ops.runtime.supervisor import Stack, StackOptions

HERE = Path(__file__).resolve().parent
STRATEGY, VENUE = "benchexec", "benchexec"
MINUTE = 60 * NS_PER_SECOND


class EveryBarRebalancer(BaseStrategy):
    """Hold 0.5/N or 0.9/N of equity in every symbol, switching every one-minute bar: N orders per batch."""

    lookback = 1
    leverage_limit = 1.0

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        minutes = np.asarray(pd.DatetimeIndex(prices.index).asi8) // MINUTE
        level = np.where(minutes % 2 == 0, 0.5, 0.9) / max(prices.shape[1], 1)
        return pd.DataFrame(np.repeat(level[:, None], prices.shape[1], axis=1), index=prices.index,
                            columns=prices.columns)


class FillStamp(msgspec.Struct):
    ts_event: int


def make_batches(count: int, symbols: int, seed: int = 0) -> list[BarBatch]:
    rng = np.random.default_rng(seed)
    names = [f"S{i:04d}" for i in range(symbols)]
    paths = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.001, (count, symbols)), axis=0))
    return [BarBatch(venue=VENUE, ts_event=NS_PER_DAY + i * MINUTE, symbols=names, open=row.tolist(),
                     high=row.tolist(), low=row.tolist(), close=row.tolist(), volume=[1e9] * symbols, seq=i)
            for i, row in enumerate(paths)]


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "n": len(seconds)}


def engine_baseline(batches: list[BarBatch]) -> tuple[float, list[float]]:
    """Return (batches per second, per-batch seconds) of the engine alone on the same batches."""
    from qmp_execution.engine import EngineConfig, ExecutionEngine  # the service's engine, in this process

    clock = ReplayClock()
    engine = ExecutionEngine({STRATEGY: EveryBarRebalancer()}, EngineConfig(), clock)
    times: list[float] = []
    for batch in batches:
        clock.observe(batch.ts_event)
        start = time.perf_counter()
        engine.process(batch)
        times.append(time.perf_counter() - start)
    trading = times[2:]
    return len(trading) / sum(trading), trading


async def measure(stack: Stack, batches: list[BarBatch], symbols: int, latency_batches: int) -> dict:
    assert stack.credentials is not None
    collector = await stack.credentials.connect("collector")
    observer = await stack.connection.connect()
    js = collector.jetstream()
    decoder = msgspec.json.Decoder(FillStamp)
    counts: dict[int, int] = {}
    done: dict[int, float] = {}
    waiters: dict[int, asyncio.Event] = {}

    async def on_fill(msg) -> None:
        ts = decoder.decode(msg.data).ts_event
        counts[ts] = counts.get(ts, 0) + 1
        if counts[ts] == symbols:
            done[ts] = time.perf_counter()
            if ts in waiters:
                waiters[ts].set()

    await observer.subscribe(subjects.fills(STRATEGY), cb=on_fill, pending_msgs_limit=-1, pending_bytes_limit=-1)

    async def publish(batch: BarBatch) -> None:
        await js.publish(subjects.bars(VENUE), encode(batch), headers=headers_for(f"{VENUE}:{batch.ts_event}"))

    async def complete(ts: int, limit_s: float = 120.0) -> None:
        event = waiters.setdefault(ts, asyncio.Event())
        if ts in done:
            return
        await asyncio.wait_for(event.wait(), limit_s)

    # Warm-up: the first batch fills the window; the next ones warm caches and the database.
    for batch in batches[:5]:
        await publish(batch)
    await complete(batches[4].ts_event)
    latencies: list[float] = []
    for batch in batches[5 : 5 + latency_batches]:
        start = time.perf_counter()
        await publish(batch)
        await complete(batch.ts_event)
        latencies.append(done[batch.ts_event] - start)
    burst = batches[5 + latency_batches :]
    start = time.perf_counter()
    acks = [await js.publish_async(subjects.bars(VENUE), encode(b), headers=headers_for(f"{VENUE}:{b.ts_event}"))
            for b in burst]
    await asyncio.gather(*acks)
    await complete(burst[-1].ts_event, limit_s=600.0)
    elapsed = time.perf_counter() - start
    await collector.close()
    await observer.close()
    return {"latency_publish_to_last_fill": percentiles(latencies),
            "throughput": {"batches": len(burst), "seconds": elapsed, "batches_per_s": len(burst) / elapsed,
                           "fills_per_s": len(burst) * symbols / elapsed}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=200, help="batches in the throughput burst")
    parser.add_argument("--latency-batches", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    batches = make_batches(5 + args.latency_batches + args.batches, args.symbols)
    engine_rate, engine_times = engine_baseline(batches)
    home = Path(tempfile.mkdtemp(prefix="qmp-bench-exec-"))
    options = StackOptions(home=home, clock="replay", services=("execution",), service_env={"execution": {
        "QMP_STRATEGIES": f"{STRATEGY}=bench_execution_pipeline:EveryBarRebalancer", "QMP_VENUES": VENUE,
        "QMP_LOG_LEVEL": "WARNING", "PYTHONPATH": str(HERE)}})
    stack = Stack(options)
    try:
        stack.start_servers()
        stack.start_service("execution")
        asyncio.run(stack.wait_healthy("execution"))
        results = asyncio.run(measure(stack, batches, args.symbols, args.latency_batches))
    finally:
        stack.stop()
    results["symbols_per_batch"] = args.symbols
    results["engine_only"] = {"batches_per_s": engine_rate, **percentiles(engine_times)}
    results["end_to_end_over_engine_batches_per_s"] = results["throughput"]["batches_per_s"] / engine_rate
    results["latency_p99_over_engine_p99"] = (results["latency_publish_to_last_fill"]["p99_ms"]
                                              / results["engine_only"]["p99_ms"])
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        return
    for name, figures in results.items():
        print(f"{name:40s} {figures}")


if __name__ == "__main__":
    main()

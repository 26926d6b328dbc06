"""Market-data throughput: bar updates per second from a collector's publish to the risk snapshot.

The same risk service (in-process, its real FastStream durable subscriber) takes the same synthetic
1,000-symbol bars two ways in one run:
- batched: one BarBatch message per timestamp, the columns of all 1,000 symbols (QMP's design);
- baseline: one message per bar (a one-symbol BarBatch per symbol and timestamp).
Each run ends when the risk consumer has taken every message and the risk snapshot for a portfolio at
the last timestamp has been published. Embedded NATS and PostgreSQL unless QMP_NATS_URL / QMP_DATABASE_URL.

    .venv/bin/python tests/bench/bench_market_data.py [--symbols 1000] [--batches 200] [--baseline-batches 5] [--json]
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import nats

from qmp_collector.sources import SyntheticSource
from qmp_core import bus, subjects
from qmp_core.db import migrate
from qmp_core.messages import BarBatch, PortfolioSnapshot, encode
from qmp_ops.runtime.nats_server import EmbeddedNats, NatsCredentials
from qmp_ops.runtime.postgres_server import EmbeddedPostgres
from qmp_ops.testing import settings_for
from qmp_risk.app import RiskService
from qmp_risk.config import RiskSettings

START_NS = 1_700_000_000 * 1_000_000_000


def one_bar_messages(batch: BarBatch, venue: str) -> list[BarBatch]:
    n = len(batch.symbols)
    return [
        BarBatch(venue=venue, ts_event=batch.ts_event, symbols=[batch.symbols[i]], open=[batch.open[i]],
                 high=[batch.high[i]], low=[batch.low[i]], close=[batch.close[i]], volume=[batch.volume[i]],
                 seq=batch.seq, chunk=i, chunks=n)
        for i in range(n)
    ]


async def drained(js: nats.js.JetStreamContext) -> bool:
    info = await js.consumer_info(subjects.STREAM_MARKET_DATA, RiskSettings().consumer("bars"))
    return info.num_pending == 0 and info.num_ack_pending == 0


async def run_mode(credentials: NatsCredentials, batches: list[BarBatch], venue: str, per_bar: bool) -> dict:
    connect = credentials.connect
    collector, execution, observer = await connect("collector"), await connect("execution"), await connect("operator")
    strategy = f"bench_{venue}"
    last_ts = batches[-1].ts_event
    done = asyncio.Event()

    async def on_snapshot(msg) -> None:
        if msgspec.json.decode(msg.data)["ts_event"] >= last_ts:
            done.set()

    await observer.subscribe(subjects.snapshot(strategy), cb=on_snapshot)
    messages = [m for b in batches for m in (one_bar_messages(b, venue) if per_bar else [
        msgspec.structs.replace(b, venue=venue)])]
    payloads = [encode(m) for m in messages]  # encoding is the collector's cost, not the path's
    js_collector = collector.jetstream()
    start = time.perf_counter()
    for index, payload in enumerate(payloads):
        await js_collector.publish(subjects.bars(venue), payload, headers={"Nats-Msg-Id": f"{venue}:{index}"})
    last = batches[-1]
    book = PortfolioSnapshot(strategy=strategy, ts_event=last_ts, cash=500_000.0, equity=1_000_000.0,
                             symbols=last.symbols[:10], quantities=[100.0] * 10, prices=last.close[:10])
    await execution.jetstream().publish(subjects.portfolio(strategy), encode(book),
                                        headers={"Nats-Msg-Id": f"{strategy}:{last_ts}"})
    await asyncio.wait_for(done.wait(), timeout=120)
    js = observer.jetstream()
    for _ in range(12_000):  # the consumer's state is polled: the server has no drain notification
        if await drained(js):
            break
        await asyncio.sleep(0.01)
    seconds = time.perf_counter() - start
    for nc in (collector, execution, observer):
        await nc.close()
    bars = sum(len(b.symbols) for b in batches)
    return {"messages": len(messages), "bars": bars, "seconds": seconds, "bars_per_s": bars / seconds}


async def main_async(args: argparse.Namespace, credentials: NatsCredentials, database_url: str) -> dict:
    admin = await credentials.connect("operator")
    await bus.declare(admin.jetstream())
    await admin.close()
    await migrate(database_url)
    source = SyntheticSource(args.symbols, seed=7, start_ns=START_NS, bar_seconds=60)
    batches = [source.next_batch() for _ in range(args.batches)]
    settings = msgspec.convert(msgspec.structs.asdict(settings_for(credentials, "risk", database_url)) |
                               {"bar_wait_s": 5.0}, RiskSettings)
    service = RiskService(settings)
    await service.start()
    try:
        batched = await run_mode(credentials, batches, "benchbatched", per_bar=False)
        baseline = await run_mode(credentials, batches[: args.baseline_batches], "benchperbar", per_bar=True)
    finally:
        await service.stop()
    return {"symbols": args.symbols, "batched": batched, "baseline_one_message_per_bar": baseline,
            "speedup": batched["bars_per_s"] / baseline["bars_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--baseline-batches", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qmp-bench-md-"))
    nats_server = postgres = None
    try:
        if os.environ.get("QMP_NATS_URL"):
            credentials = NatsCredentials(url=os.environ["QMP_NATS_URL"])
        else:
            nats_server = EmbeddedNats(work / "nats")
            credentials = nats_server.start()
        if os.environ.get("QMP_DATABASE_URL"):
            database_url = os.environ["QMP_DATABASE_URL"]
        else:
            postgres = EmbeddedPostgres(work / "postgres")
            database_url = postgres.start()
        results = asyncio.run(main_async(args, credentials, database_url))
    finally:
        if postgres is not None:
            postgres.stop()
        if nats_server is not None:
            nats_server.stop()
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        return
    for mode in ("batched", "baseline_one_message_per_bar"):
        figures = results[mode]
        print(f"{mode:30s} {figures['bars']:>8,} bars in {figures['messages']:>7,} messages: "
              f"{figures['seconds']:7.2f} s, {figures['bars_per_s']:>12,.0f} bar updates/s")
    print(f"speed-up batched / one message per bar: {results['speedup']:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()

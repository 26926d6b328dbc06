"""Market data through the real collector and risk processes, against the bare transport in the same run.

Each round starts its own stack (embedded NATS and PostgreSQL, TLS and permissions as `qmp up` has them;
QMP_NATS_URL / QMP_DATABASE_URL select running servers) and measures two things on it:
- the bare transport (the ceiling): this process publishes the same SYMBOLS-bar batches the collector would
  publish (one `BarBatch` per timestamp in the same encoding, `messages.wire`) on core NATS as the collector's user, at
  most WINDOW batches ahead, and a second connection receives and decodes each; timed from the first
  publish to the last decode.
- the stack: a collector process (synthetic source, SYMBOLS symbols, BATCHES batches, replay clock, as fast
  as it goes: it validates, publishes with an ack per batch and stores the bars in PostgreSQL) and a risk
  process (its durable consumer: per-symbol returns, volatility, VaR/ES state on every bar); timed from the
  first bar on the stream to risk's consumer having acknowledged the last. Then a portfolio at the last
  timestamp must come back as a risk snapshot, so risk is known to have taken every batch.
Printed per round and as min/median/max over the rounds: bar updates per second of each, the stack's share
of the ceiling, and the CPU time per bar of the collector and of risk.

    .venv/bin/python tests/bench/bench_market_data.py [--symbols 1000] [--batches 300] [--rounds 3] [--json]
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import nats
import psutil

from qmp_collector.sources import SyntheticSource
from qmp_core import subjects
from qmp_core.messages import BarBatch, PortfolioSnapshot, codec, encode, wire
from qmp_ops.runtime.supervisor import Stack, StackOptions
from qmp_risk.config import RiskSettings

START = "2020-01-01"
START_NS = 1_577_836_800 * 1_000_000_000  # 2020-01-01T00:00Z, the collector's first synthetic bar
BAR_SECONDS = 60
VENUE, BARE_VENUE, STRATEGY = "benchmd", "benchbare", "benchmd"
TIMEOUT_S = 300.0
WINDOW = 32  # batches the bare publisher may have in flight


async def bare_transport(stack: Stack, symbols: int, batches: int) -> dict[str, float]:
    """Bars per second over core NATS: encode, publish, receive, decode; nothing else."""
    assert stack.credentials is not None
    source = SyntheticSource(symbols, seed=7, start_ns=START_NS, bar_seconds=BAR_SECONDS, venue=BARE_VENUE)
    data = [source.next_batch() for _ in range(batches)]
    publisher = await stack.credentials.connect("collector")
    receiver = await stack.connection.connect()
    decoder = codec(BarBatch)
    received, taken, done, caught_up = 0, 0, asyncio.Event(), asyncio.Event()

    async def on_batch(msg: nats.aio.msg.Msg) -> None:
        nonlocal received, taken
        received += len(decoder.decode(msg.data, msg.headers.get("Content-Type") if msg.headers else None).symbols)
        taken += 1
        if taken % (WINDOW // 2) == 0:
            caught_up.set()
        if received == symbols * batches:
            done.set()

    subject = subjects.bars(BARE_VENUE)
    await receiver.subscribe(subject, cb=on_batch, pending_bytes_limit=2**30, pending_msgs_limit=batches + 1)
    await receiver.flush()
    start = time.perf_counter()
    for sent, batch in enumerate(data):
        # A window of batches in flight, as the stack has: a core subscriber that falls too far behind is
        # cut off by the server as a slow consumer, and its messages are lost.
        while sent - taken >= WINDOW:
            caught_up.clear()
            await publisher.flush()
            await caught_up.wait()
        payload, content_type = wire(batch)  # what the collector sends
        await publisher.publish(subject, payload, headers={"Content-Type": content_type})
    await publisher.flush()
    await asyncio.wait_for(done.wait(), TIMEOUT_S)
    seconds = time.perf_counter() - start
    # The subject is in the market-data stream: drop what the ceiling stored so no consumer ever takes it.
    await receiver.jetstream().purge_stream(subjects.STREAM_MARKET_DATA, subject=subject)
    await publisher.close()
    await receiver.close()
    return {"seconds": round(seconds, 3), "bars_per_s": round(symbols * batches / seconds, 1)}


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def through_stack(stack: Stack, symbols: int, batches: int) -> dict[str, float]:
    """Start risk, then the collector; time from the first bar on the stream to risk's last ack."""
    nc = await stack.connection.connect()
    js = nc.jetstream()
    first: list[float] = []
    snapshot_ts: list[int] = []
    last_ts = START_NS + (batches - 1) * BAR_SECONDS * 1_000_000_000

    async def on_bars(_msg: nats.aio.msg.Msg) -> None:
        if not first:
            first.append(time.perf_counter())

    async def on_snapshot(msg: nats.aio.msg.Msg) -> None:
        snapshot_ts.append(msgspec.json.decode(msg.data)["ts_event"])

    await nc.subscribe(subjects.bars(VENUE), cb=on_bars)
    await nc.subscribe(subjects.snapshot(STRATEGY), cb=on_snapshot)
    await stack.start_services()
    risk, collector = (psutil.Process(stack.processes[name].pid) for name in ("risk", "collector"))
    cpu_before = {"risk": cpu_seconds(risk), "collector": cpu_seconds(collector)}
    consumer = RiskSettings().consumer("bars")
    deadline = time.monotonic() + TIMEOUT_S
    stored = False  # every batch is on the stream (the collector is done)
    while True:
        if time.monotonic() > deadline:
            raise RuntimeError(f"risk did not take every batch within {TIMEOUT_S:.0f} s; logs in {stack.run_dir}")
        if not stored:
            stream = await js.stream_info(subjects.STREAM_MARKET_DATA, subjects_filter=subjects.bars(VENUE))
            stored = (stream.state.subjects or {}).get(subjects.bars(VENUE), 0) >= batches
        if stored:
            info = await js.consumer_info(subjects.STREAM_MARKET_DATA, consumer)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
        await asyncio.sleep(0.005)
    end = time.perf_counter()
    cpu = {"risk": cpu_seconds(risk) - cpu_before["risk"],
           "collector": cpu_seconds(collector) - cpu_before["collector"]}
    # Risk has every bar: a portfolio at the last timestamp is valued and answered at once.
    assert stack.credentials is not None
    execution = await stack.credentials.connect("execution")
    held = [f"S{i:04d}" for i in range(min(10, symbols))]
    book = PortfolioSnapshot(strategy=STRATEGY, ts_event=last_ts, cash=500_000.0, equity=1_000_000.0,
                             symbols=held, quantities=[100.0] * len(held), prices=[100.0] * len(held))
    await execution.jetstream().publish(subjects.portfolio(STRATEGY), encode(book),
                                        headers={"Nats-Msg-Id": f"{STRATEGY}:{last_ts}"})
    for _ in range(1_000):
        if snapshot_ts:
            break
        await asyncio.sleep(0.01)
    await execution.close()
    await nc.close()
    if snapshot_ts != [last_ts]:
        raise RuntimeError(f"expected one risk snapshot at {last_ts}, got {snapshot_ts}; logs in {stack.run_dir}")
    assert first, "no bar was seen on the stream"
    seconds = end - first[0]
    bars = symbols * batches
    return {"seconds": round(seconds, 3), "bars_per_s": round(bars / seconds, 1),
            "cpu_us_per_bar": {name: round(value / bars * 1e6, 2) for name, value in cpu.items()}}


def one_round(symbols: int, batches: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="qmp-bench-md-"))
    stack = Stack(StackOptions(home=home, clock="replay", share_connection=False, services=("risk", "collector"),
                               service_env={"collector": {
                                   "QMP_SOURCE": "synthetic", "QMP_SYMBOLS": str(symbols), "QMP_VENUE": VENUE,
                                   "QMP_START": START, "QMP_BAR_SECONDS": str(BAR_SECONDS),
                                   "QMP_MAX_BATCHES": str(batches), "QMP_REPLAY_RATE": "0"}}))
    try:
        stack.start_servers()
        bare = asyncio.run(bare_transport(stack, symbols, batches))
        through = asyncio.run(through_stack(stack, symbols, batches))
    finally:
        stack.stop()
    return {"bare_transport": bare, "stack": through,
            "stack_over_bare": round(through["bars_per_s"] / bare["bars_per_s"], 4)}


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.symbols < 10 or args.batches < 2:
        parser.error("at least 10 symbols and 2 batches")
    rounds = []
    for index in range(args.rounds):
        print(f"round {index + 1}/{args.rounds}", file=sys.stderr, flush=True)
        rounds.append(one_round(args.symbols, args.batches))
    result = {
        "symbols": args.symbols, "batches": args.batches, "bars": args.symbols * args.batches,
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
        "bare_transport_bars_per_s": spread([r["bare_transport"]["bars_per_s"] for r in rounds]),
        "stack_bars_per_s": spread([r["stack"]["bars_per_s"] for r in rounds]),
        "stack_over_bare": spread([r["stack_over_bare"] for r in rounds]),
        "rounds": rounds,
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(f"{result['bars']:,} bars ({args.symbols} symbols x {args.batches} batches) per round, "
          f"load {result['load_average']}")
    for r in rounds:
        cpu = r["stack"]["cpu_us_per_bar"]
        print(f"  bare {r['bare_transport']['bars_per_s']:>12,.0f} bars/s   stack {r['stack']['bars_per_s']:>10,.0f} "
              f"bars/s ({r['stack_over_bare']:.3f} of bare; CPU per bar: collector {cpu['collector']:.2f} µs, "
              f"risk {cpu['risk']:.2f} µs)")
    for name in ("bare_transport_bars_per_s", "stack_bars_per_s", "stack_over_bare"):
        s = result[name]
        print(f"  {name:26s} min {s['min']:>12,.4g}  median {s['median']:>12,.4g}  max {s['max']:>12,.4g}")
    print("  goal: the stack within 5x of the bare transport (stack_over_bare >= 0.2)")


if __name__ == "__main__":
    main()

"""Halt latency: request → reply, and request → first denied order, p50/p99 over N halt/resume cycles.

Runs deployer, execution and collector as processes on embedded servers (or QMP_NATS_URL /
QMP_DATABASE_URL), with synthetic one-minute bars at a fixed rate and a strategy that trades every bar.
The first denial can only come with the next batch, so its latency includes up to one batch interval;
the figure printed beside it is that interval. Baseline in the same run: a plain request/reply round trip
to the deployer's health endpoint (the bus's floor).

    .venv/bin/python tests/bench/bench_halt_latency.py [--cycles 1000] [--rate 500] [--json]
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track

from qmp_core import subjects
from qmp_ops.runtime.supervisor import Stack, StackOptions

ROOT = Path(__file__).resolve().parents[2]
STRATEGY = "bench_halt"


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values) * 1e3
    return {"p50_ms": float(np.percentile(array, 50)), "p99_ms": float(np.percentile(array, 99)),
            "max_ms": float(array.max()), "n": len(values)}


async def measure(stack: Stack, cycles: int) -> dict:
    nc = await stack.connection.connect()
    first: dict[str, float] = {}  # first arrival of each decision kind since the last reset
    arrived = {"OrderDenied": asyncio.Event(), "OrderAccepted": asyncio.Event()}

    async def on_decision(msg) -> None:
        now = time.perf_counter()
        kind = "OrderDenied" if b'"OrderDenied"' in msg.data else "OrderAccepted"
        if not arrived[kind].is_set():
            first[kind] = now
            arrived[kind].set()

    async def first_after(kind: str) -> float:
        await asyncio.wait_for(arrived[kind].wait(), timeout=10)
        return first[kind]

    await nc.subscribe(subjects.orders(STRATEGY), cb=on_decision, pending_msgs_limit=-1)
    await first_after("OrderAccepted")
    floor, reply_latency, denial_latency, resume_latency = [], [], [], []
    for _ in range(200):
        start = time.perf_counter()
        await nc.request(subjects.health("deployer"), b"", timeout=5)
        floor.append(time.perf_counter() - start)
    # The progress bar goes to stderr: with --json, stdout holds only the JSON document.
    for cycle in track(range(cycles), description="halt/resume cycles", console=Console(stderr=True)):
        arrived["OrderDenied"].clear()
        start = time.perf_counter()
        reply = json.loads((await nc.request(subjects.control(STRATEGY),
                                             json.dumps({"command": "halt", "reason": "bench",
                                                         "command_id": f"h{cycle}"}).encode(), timeout=5)).data)
        reply_latency.append(time.perf_counter() - start)
        assert reply["accepted"], reply
        denial_latency.append(await first_after("OrderDenied") - start)
        arrived["OrderAccepted"].clear()
        start = time.perf_counter()
        await nc.request(subjects.control(STRATEGY),
                         json.dumps({"command": "resume", "command_id": f"r{cycle}"}).encode(), timeout=5)
        resume_latency.append(time.perf_counter() - start)
        await first_after("OrderAccepted")
    await nc.close()
    return {"request_reply_floor": percentiles(floor), "halt_to_reply": percentiles(reply_latency),
            "resume_to_reply": percentiles(resume_latency), "halt_to_first_denied_order": percentiles(denial_latency)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="market-data batches per second")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="qmp-bench-"))
    options = StackOptions(
        home=home, clock="replay", services=("deployer", "execution", "collector"),
        service_env={
            "collector": {"QMP_SOURCE": "synthetic", "QMP_VENUE": "benchhalt", "QMP_SYMBOLS": "10",
                          "QMP_BAR_SECONDS": "60", "QMP_REPLAY_RATE": str(args.rate)},
            "execution": {"QMP_STRATEGIES": f"{STRATEGY}=qmp_test_strategies:MinuteRebalancer",
                          "PYTHONPATH": str(ROOT / "tests" / "support")},
        },
    )
    stack = Stack(options)
    try:
        stack.start_servers()
        asyncio.run(stack.start_services())
        results = asyncio.run(measure(stack, args.cycles))
    finally:
        stack.stop()
    results["batch_interval_ms"] = 1e3 / args.rate
    results["reply_p99_over_floor_p99"] = (results["halt_to_reply"]["p99_ms"]
                                           / results["request_reply_floor"]["p99_ms"])
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        return
    for name, figures in results.items():
        print(f"{name:32s} {figures}")


if __name__ == "__main__":
    main()

"""Halts under load: the deployer (as a process, embedded NATS and PostgreSQL) answering many clients.

Three phases in one run, the first being the baseline the others are compared with:
1. alone: one client alternates halt and resume on one strategy;
2. load: `--clients` clients (each its own connection) send set_allocation to their own strategies as
   fast as they are answered for `--seconds`, while one more client halts and resumes another strategy
   every 50 ms;
3. burst: `--burst` set_allocation requests sent at once over the clients' connections, with halts
   sent during the burst.
The halting client is a process of its own, as an operator's `qmp halt` is, and sends its halts to halts'
lane (`qmp.control.<sender>.<strategy>.urgent`), its resumes to the main one.
It prints halt round trips (p50 / p99 / max), the other requests' rate and every error or timeout, the
ratio of the halt p99 under load and in the burst to the halt p99 alone, and the deployer's resident memory
before the load, halfway, after it and after the burst, with its slope in each half of the load (MB per
minute; it flattens once the 100,000 replies the deployer remembers for retries are held).

    .venv/bin/python tests/bench/bench_control_load.py [--clients 100] [--seconds 60] [--burst 10000] [--json]
"""

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import Any

import nats
import numpy as np
import psutil

from qmp_core import subjects
from qmp_ops.runtime.supervisor import Connection, Stack, StackOptions

TIMEOUT_S = 30.0


def figures(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    if not len(ms):
        return {"n": 0}
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(float(ms.max()), 2), "n": len(ms)}


async def timed_request(nc: nats.NATS, subject: str, body: dict, errors: list[str]) -> float | None:
    start = time.perf_counter()
    try:
        reply = json.loads((await nc.request(subject, json.dumps(body).encode(), timeout=TIMEOUT_S)).data)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as error:
        errors.append(type(error).__name__)
        return None
    if not reply.get("accepted"):
        errors.append(reply.get("reason", "rejected")[:100])
        return None
    return time.perf_counter() - start


async def halts(nc: nats.NATS, strategy: str, until: asyncio.Event, every_s: float, errors: list[str],
                count: int | None = None) -> list[float]:
    """Alternate halt and resume on `strategy`; return the halts' round trips."""
    latencies: list[float] = []
    n = 0
    while not until.is_set() and (count is None or n < 2 * count):
        command = ({"command": "halt", "reason": "bench"} if n % 2 == 0 else {"command": "resume"})
        took = await timed_request(nc, subjects.control(strategy, urgent=n % 2 == 0),
                                   {**command, "command_id": f"{strategy}-{n}"}, errors)
        if n % 2 == 0 and took is not None:
            latencies.append(took)
        n += 1
        await asyncio.sleep(every_s)
    return latencies


def halting_process(connection: Connection, strategy: str, start: ProcessEvent, seconds: float, every_s: float,
                    count: int | None) -> tuple[list[float], list[str]]:
    """In a process of its own: once `start` is set, halt and resume for `seconds` (or `count` halts)."""
    async def run() -> tuple[list[float], list[str]]:
        nc = await connection.connect()
        errors: list[str] = []
        start.wait()
        until = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, until.set)
        latencies = await halts(nc, strategy, until, every_s, errors, count)
        await nc.close()
        return latencies, errors

    return asyncio.run(run())


async def load(nc: nats.NATS, strategy: str, until: asyncio.Event, errors: list[str]) -> int:
    done = 0
    while not until.is_set():
        allocation = 0.5 if done % 2 else 0.25
        if await timed_request(nc, subjects.control(strategy), {"command": "set_allocation",
                                                                "allocation": allocation}, errors) is not None:
            done += 1
    return done


def rss_mb(stack: Stack) -> float:
    return round(psutil.Process(stack.processes["deployer"].pid).memory_info().rss / 2**20, 1)


async def measure(stack: Stack, clients: int, seconds: float, burst: int) -> dict:
    connection = stack.connection
    pool = [await connection.connect() for _ in range(clients)]
    loop = asyncio.get_running_loop()
    manager = multiprocessing.get_context("spawn").Manager()
    executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    async def halting(strategy: str, seconds: float, every_s: float, count: int | None) -> tuple[
            asyncio.Future[tuple[list[float], list[str]]], Any]:
        start = manager.Event()
        future = loop.run_in_executor(executor, halting_process, connection, strategy, start, seconds, every_s,
                                      count)
        return future, start

    alone_run, go = await halting("bench-alone", 3600.0, 0.0, 200)
    go.set()
    alone, errors = await alone_run

    stop = asyncio.Event()
    rss_before = rss_mb(stack)
    under_load_run, go = await halting("bench-urgent", seconds, 0.05, None)
    workers = [asyncio.create_task(load(nc, f"bench-load-{i}", stop, errors)) for i, nc in enumerate(pool)]
    go.set()
    started = time.perf_counter()
    await asyncio.sleep(seconds / 2)
    rss_mid_load = rss_mb(stack)
    await asyncio.sleep(seconds / 2)
    stop.set()
    under_load, more_errors = await under_load_run
    errors += more_errors
    handled = sum(await asyncio.gather(*workers))
    elapsed = time.perf_counter() - started
    rss_after_load = rss_mb(stack)

    burst_errors: list[str] = []
    in_burst_run, go = await halting("bench-burst-urgent", 3600.0, 0.02, 100)  # ~3 s: most of the burst
    await asyncio.sleep(3.0)  # the halting process is up and connected
    requests = [timed_request(pool[i % clients], subjects.control(f"bench-burst-{i % clients}"),
                              {"command": "set_allocation", "allocation": 0.5 if i % 2 else 0.25}, burst_errors)
                for i in range(burst)]
    flood = asyncio.gather(*requests)
    burst_started = time.perf_counter()
    await asyncio.sleep(0.1)  # the burst is sent: the halts arrive behind it
    go.set()
    answered = [took for took in await flood if took is not None]
    burst_s = time.perf_counter() - burst_started
    halts_in_burst, more_errors = await in_burst_run
    burst_errors += more_errors
    rss_after_burst = rss_mb(stack)
    executor.shutdown()
    manager.shutdown()
    for nc in pool:
        await nc.close()
    result = {
        "halt_alone": figures(alone),
        "halt_under_load": figures(under_load),
        "halt_in_burst": figures(halts_in_burst),
        "load_requests_per_s": round(handled / elapsed, 1),
        "load_errors": len(errors),
        "burst_requests": burst, "burst_answered": len(answered), "burst_seconds": round(burst_s, 2),
        "burst_errors": len(burst_errors), "burst_request": figures(answered),
        "error_kinds": sorted(set(errors + burst_errors))[:5],
        # The deployer remembers the last 100,000 replies (a retry within them is answered, not applied again):
        # memory grows until that window is full, then stays (compare the two halves of a long load).
        "deployer_rss_mb": {"before": rss_before, "mid_load": rss_mid_load, "after_load": rss_after_load,
                            "after_burst": rss_after_burst,
                            "first_half_slope_mb_per_min": round((rss_mid_load - rss_before) / (seconds / 120), 2),
                            "second_half_slope_mb_per_min": round((rss_after_load - rss_mid_load) / (seconds / 120),
                                                                  2)},
    }
    base = result["halt_alone"].get("p99_ms") or float("nan")
    result["halt_p99_under_load_over_alone"] = round(result["halt_under_load"].get("p99_ms", float("nan")) / base, 2)
    result["halt_p99_in_burst_over_alone"] = round(result["halt_in_burst"].get("p99_ms", float("nan")) / base, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="qmp-bench-load-"))
    stack = Stack(StackOptions(home=home, clock="live", services=("deployer",), share_connection=False))
    try:
        stack.start_servers()
        stack.start_service("deployer")
        asyncio.run(stack.wait_healthy("deployer"))
        results = asyncio.run(measure(stack, args.clients, args.seconds, args.burst))
    finally:
        stack.stop()
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        return
    for name, value in results.items():
        print(f"{name:34s} {value}")


if __name__ == "__main__":
    main()

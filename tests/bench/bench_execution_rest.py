"""Concurrent REST broker client against a sequential one: order submissions per second, same run.

A fake REST broker (`qmp_execution.fake_broker`, aiohttp) answers on 127.0.0.1 in its own process after
`--latency-ms` (50 by default), as a remote broker would. Both runs use the same `RestBrokerClient`
(pooled connections, idempotency keys, retries) on the same endpoint: the baseline awaits each order
before sending the next, the concurrent run submits `--orders` orders with up to `--concurrency` in
flight (`RestBrokerAdapter.submit_many`). Figures: requests per second, latency percentiles, and the
ratio concurrent / sequential (the target is at least 10×).

    .venv/bin/python tests/bench/bench_execution_rest.py [--orders 2000] [--concurrency 200] [--json]
"""

import argparse
import asyncio
import json
import multiprocessing
import sys
import time

import numpy as np

from qmp_execution.engine.broker import BrokerOrder
from qmp_execution.fake_broker import serve
from qmp_execution.rest import RestBrokerAdapter, RestBrokerClient, RestBrokerConfig


def orders(count: int, tag: str) -> list[BrokerOrder]:
    return [BrokerOrder(order_id=f"bench-{tag}-{i}", strategy="bench", symbol=f"S{i % 1000:04d}", side="BUY",
                        quantity=10.0, price=100.0, ts_event=i + 1) for i in range(count)]


async def timed(adapter: RestBrokerAdapter, batch: list[BrokerOrder], concurrent: bool) -> dict[str, float]:
    latencies: list[float] = []

    async def one(order: BrokerOrder) -> None:
        async with adapter.client.semaphore:  # latency of the request itself, not of the queue before it
            start = time.perf_counter()
            ack = await adapter.submit(order)
            latencies.append(time.perf_counter() - start)
        if ack.status != "filled":
            raise RuntimeError(f"order {order.order_id} not filled: {ack}")

    start = time.perf_counter()
    if concurrent:
        await asyncio.gather(*(one(order) for order in batch))
    else:
        for order in batch:
            await one(order)
    elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1e3
    return {"requests": len(batch), "seconds": elapsed, "requests_per_s": len(batch) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


async def measure(url: str, sequential: int, concurrent: int, concurrency: int) -> dict:
    config = RestBrokerConfig(primary_url=url, max_connections=concurrency, max_concurrency=concurrency,
                              timeout_s=10.0, latency_threshold_ms=10_000.0)
    async with RestBrokerClient(config) as client:
        adapter = RestBrokerAdapter(client)
        await timed(adapter, orders(50, "warm"), concurrent=True)
        baseline = await timed(adapter, orders(sequential, "seq"), concurrent=False)
        fast = await timed(adapter, orders(concurrent, "conc"), concurrent=True)
        errors = sum(e.errors for e in client.endpoints.values())
    return {"sequential": baseline, "concurrent": fast, "concurrency": concurrency, "errors": errors,
            "speedup_requests_per_s": fast["requests_per_s"] / baseline["requests_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=2000, help="orders in the concurrent run")
    parser.add_argument("--sequential-orders", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    ports = context.Queue()
    stop = context.Event()
    server = context.Process(target=serve, args=(ports, args.latency_ms / 1e3, stop), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=30)
        results = asyncio.run(measure(f"http://127.0.0.1:{port}", args.sequential_orders, args.orders,
                                      args.concurrency))
    finally:
        stop.set()
        server.join(10)
        if server.is_alive():
            server.terminate()
    results["server_latency_ms"] = args.latency_ms
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        return
    for name, figures in results.items():
        print(f"{name:26s} {figures}")


if __name__ == "__main__":
    main()

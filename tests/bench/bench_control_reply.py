"""Control reply latency of the deployer alone (in-process, embedded NATS and PostgreSQL, nothing else running).

Alternates halt and resume requests from a plain nats-py client and prints p50/p99 of the round trip,
next to the time spent in each step of the handler (KV compare-and-set, audit stream publish, state
publish) and a baseline in the same run: the same client's request/reply to the deployer's health
endpoint. `bench_halt_latency.py` measures the same under a running stack.

    .venv/bin/python tests/bench/bench_control_reply.py [--requests 1000] [--json]
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import qmp_deployer.handlers.control as control
from qmp_core import bus, subjects
from qmp_core.db import migrate
from qmp_deployer.app import create_app
from qmp_ops.runtime.nats_server import EmbeddedNats
from qmp_ops.runtime.postgres_server import EmbeddedPostgres
from qmp_ops.testing import settings_for


def figures(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def timed(steps: dict[str, list[float]], owner: object, name: str, label: str) -> None:
    """Wrap an async method of `owner` so that each call's duration lands in steps[label]."""
    original = getattr(owner, name)

    async def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            steps.setdefault(label, []).append(time.perf_counter() - start)

    setattr(owner, name, wrapper)


async def measure(work: Path, requests: int) -> dict:
    nats_server, postgres = EmbeddedNats(work / "nats"), EmbeddedPostgres(work / "postgres")
    credentials, database_url = nats_server.start(), postgres.start()
    steps: dict[str, list[float]] = {}
    try:
        await migrate(database_url)
        client = await credentials.connect("operator")
        await bus.declare(client.jetstream())
        async with create_app(settings_for(credentials, "deployer", database_url, run_dir=str(work))):
            await client.request(subjects.health("deployer"), b"", timeout=10)
            timed(steps, control.ControlStore, "write", "kv_compare_and_set")
            timed(steps, control.bus, "publish", "audit_stream_publish")
            timed(steps, control.ControlHandler, "_publish_states", "state_publish")
            timed(steps, control.ControlHandler, "apply", "handler_apply_total")
            floor, replies = [], []
            for _ in range(200):
                start = time.perf_counter()
                await client.request(subjects.health("deployer"), b"", timeout=5)
                floor.append(time.perf_counter() - start)
            for i in range(requests):
                body = ({"command": "halt", "reason": "bench", "command_id": f"h{i}"} if i % 2 == 0
                        else {"command": "resume", "command_id": f"r{i}"})
                start = time.perf_counter()
                reply = await client.request(subjects.control("bench"), json.dumps(body).encode(), timeout=5)
                replies.append(time.perf_counter() - start)
                assert json.loads(reply.data)["accepted"]
        await client.close()
    finally:
        postgres.stop()
        nats_server.stop()
    result = {"request_reply_floor": figures(floor), "control_request_to_reply": figures(replies)}
    result |= {f"step_{name}": figures(values) for name, values in steps.items()}
    result["reply_p99_over_floor_p99"] = result["control_request_to_reply"]["p99_ms"] / result[
        "request_reply_floor"]["p99_ms"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(measure(Path(tempfile.mkdtemp(prefix="qmp-bench-control-")), args.requests))
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        return
    for name, value in results.items():
        print(f"{name:34s} {value}")


if __name__ == "__main__":
    main()

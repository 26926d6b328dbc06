"""Helpers for the deployer's tests over a real nats-server and PostgreSQL: the test plan (event time soaks of
an hour), deploy requests as plain JSON, risk snapshots that move event time, and reads of the buckets."""

import asyncio
import json
import time

import nats
from nats.js.errors import KeyNotFoundError

from qmp_core import bus, subjects
from qmp_core.clock import NS_PER_SECOND
from qmp_core.messages import RiskSnapshot, RolloutState, TradingState, codec, encode

T0 = 1_199_145_600 * NS_PER_SECOND  # 2008-01-01, event time
STEP = 10 * 60 * NS_PER_SECOND  # a snapshot every 10 minutes of event time
PLAN = b"""
name = "itest"
gate_interval_s = 60.0
[[phases]]
name = "paper"
env = "paper"
allocation = 0.1
min_soak_h = 1.0
[[phases]]
name = "live_10"
env = "live"
allocation = 0.2
min_soak_h = 1.0
[[phases]]
name = "live_100"
env = "live"
allocation = 1.0
min_soak_h = 1.0
approval = true
[metrics.drawdown]
source = "drawdown_24h"
warning = 0.10
critical = 0.15
action = "reduce_allocation"
stale_after_s = 3600.0
fail_closed = true
[metrics.var_95]
source = "var:historical_95"
warning = 0.05
critical = 0.08
action = "halt_new_positions"
failure_limit = 2
stale_after_s = 3600.0
fail_closed = true
"""
STATE = codec(RolloutState)


async def connect_as(nats_credentials, user: str) -> nats.NATS:
    return await nats_credentials.connect(user)


async def wait_for(predicate, what: str, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def rollout_of(nc: nats.NATS, strategy: str) -> tuple[RolloutState | None, int]:
    kv = await nc.jetstream().key_value(subjects.KV_ROLLOUTS)
    try:
        entry = await kv.get(subjects.rollout_key(strategy))
    except KeyNotFoundError:
        return None, 0
    return STATE.decode(entry.value), entry.revision


async def control_entry(nc: nats.NATS, strategy: str) -> tuple[TradingState | None, int]:
    kv = await bus.control_bucket(nc.jetstream())
    try:
        entry = await kv.get(subjects.control_key(strategy, "deployer"))
    except KeyNotFoundError:
        return None, 0
    return codec(TradingState).decode(entry.value), entry.revision


async def request(nc: nats.NATS, strategy: str, body: dict) -> dict:
    reply = await nc.request(f"qmp.deploy.{strategy}.cmd", json.dumps(body).encode(), timeout=5)
    return json.loads(reply.data)


def risk_snapshot(strategy: str, ts: int, drawdown: float = 0.01, var: float = 0.01) -> RiskSnapshot:
    return RiskSnapshot(strategy=strategy, ts_event=ts, equity=1e6, var={"historical_95": var}, es={},
                        drawdown_24h=drawdown, drawdown_max=drawdown, volatility_ratio=1.0, breakers=[])


def snapshot(strategy: str, ts: int, drawdown: float = 0.01, var: float = 0.01) -> bytes:
    return encode(risk_snapshot(strategy, ts, drawdown, var))


async def wait_lease_free(nats_credentials, timeout_s: float = 15.0) -> None:
    """Wait until no live deployer holds the lease (one left by an earlier test expires within its TTL)."""
    nc = await connect_as(nats_credentials, "operator")
    try:
        await bus.declare(nc.jetstream())
        kv = await nc.jetstream().key_value(subjects.KV_ROLLOUTS)

        async def free() -> bool:
            try:
                entry = await kv.get(subjects.ROLLOUT_LEASE_KEY)
            except KeyNotFoundError:
                return True
            return json.loads(entry.value)["expires_ns"] < time.time_ns()

        await wait_for(free, "the deployer lease to be free", timeout_s)
    finally:
        await nc.close()


async def publish_snapshot(risk_nc, operator_nc, strategy: str, ts: int, **values: float) -> RolloutState:
    """Publish one snapshot and wait until the deployer has evaluated at its event time."""
    await risk_nc.publish(subjects.snapshot(strategy), snapshot(strategy, ts, **values))
    await risk_nc.flush()

    async def evaluated() -> RolloutState | None:
        state, _ = await rollout_of(operator_nc, strategy)
        return state if state is not None and state.last_eval_ns >= ts and not state.outbox_events else None

    return await wait_for(evaluated, f"evaluation at {ts}")



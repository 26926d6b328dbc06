"""Execution follows each strategy's rollout from the `qmp_rollouts` bucket (real NATS, execution's own
credentials): the deployment id on its orders, and whether its phase trades at this instance's venue."""

import asyncio
import json
from typing import Any

import pytest
from nats.aio.client import Client

from qmp_core import subjects
from qmp_core.clock import TestClock
from qmp_core.messages import RolloutPhase, RolloutState, encode
from qmp_execution.engine import EngineConfig, ExecutionEngine
from qmp_execution.handlers import RolloutWatch
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import connect_as

pytestmark = pytest.mark.integration


class Flat:
    lookback = 1
    leverage_limit = 1.0

    def target_weights(self, prices: object) -> object:
        return prices * 0.0


def state(sid: str, rollout_id: str, phase_index: int) -> bytes:
    phases = [RolloutPhase(name="paper", env="paper", allocation=0.1, min_soak_s=0.0),
              RolloutPhase(name="live_10", env="live", allocation=0.1, min_soak_s=0.0)]
    return encode(RolloutState(strategy=sid, rollout_id=rollout_id, plan="test", phases=phases,
                               phase_index=phase_index))


class SignallingWatch(RolloutWatch):
    """The watch, saying which key each change it applied after its start was for."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.applied: asyncio.Queue[str] = asyncio.Queue()

    def apply(self, key: str, value: bytes, operation: str | None) -> str | None:
        invalid = super().apply(key, value, operation)
        if self.loaded.is_set():
            self.applied.put_nowait(key)
        return invalid

    async def applied_for(self, sid: str) -> None:
        """Wait until a change of `sid`'s rollout has been applied (other tests write the bucket too)."""
        async with asyncio.timeout(5):
            while await self.applied.get() != subjects.rollout_key(sid):
                pass


async def test_rollout_watch_when_the_deployer_promotes_then_the_live_instance_trades_it_and_orders_carry_its_id(
        nats_credentials: NatsCredentials, operator_nc: Client, unique_id: str) -> None:
    sid = unique_id
    deployer_nc = await connect_as(nats_credentials, "deployer")
    execution_nc = await connect_as(nats_credentials, "execution")
    writer = await deployer_nc.jetstream().key_value(subjects.KV_ROLLOUTS)
    await writer.put(subjects.rollout_key(sid), state(sid, "r-1", 0))  # in its paper phase before the start
    engine = ExecutionEngine({sid: Flat()}, EngineConfig(phase_env="live"), TestClock(0))  # type: ignore[dict-item]
    watch = SignallingWatch(await execution_nc.jetstream().key_value(subjects.KV_ROLLOUTS), engine,
                         execution_nc.jetstream())
    try:
        await watch.start()  # returns with the paper phase loaded: no capital at the live venue from the start
        assert engine.hosts[sid].deployment_id == "r-1"
        assert engine.state(sid).allocation == 0.0 and "paper phase" in engine.elsewhere[sid]

        await writer.put(subjects.rollout_key(sid), state(sid, "r-1", 1))
        await watch.applied_for(sid)
        assert sid not in engine.elsewhere and engine.state(sid).allocation == 1.0

        await writer.delete(subjects.rollout_key(sid))
        await watch.applied_for(sid)
        assert engine.hosts[sid].deployment_id == "" and engine.state(sid).allocation == 0.0
    finally:
        await watch.stop()
        await execution_nc.drain()
        await deployer_nc.drain()


async def test_rollout_watch_when_an_entry_is_no_rollout_then_dead_lettered_and_the_strategy_left_as_it_was(
        nats_credentials: NatsCredentials, operator_nc: Client, unique_id: str) -> None:
    sid = unique_id
    deployer_nc = await connect_as(nats_credentials, "deployer")
    execution_nc = await connect_as(nats_credentials, "execution")
    letters = await operator_nc.subscribe(subjects.dlq("execution"))
    await operator_nc.flush()
    writer = await deployer_nc.jetstream().key_value(subjects.KV_ROLLOUTS)
    engine = ExecutionEngine({sid: Flat()}, EngineConfig(phase_env="live"), TestClock(0))  # type: ignore[dict-item]
    watch = SignallingWatch(await execution_nc.jetstream().key_value(subjects.KV_ROLLOUTS), engine,
                         execution_nc.jetstream())
    await watch.start()
    try:
        await writer.put(subjects.rollout_key(sid), state(sid, "r-1", 1))
        await watch.applied_for(sid)

        await writer.put(subjects.rollout_key(sid), b'{"strategy": "x", "phase_index": "two"}')

        letter = json.loads((await letters.next_msg(timeout=5)).data)
        while not letter["subject"].endswith(subjects.rollout_key(sid)):  # other tests' letters
            letter = json.loads((await letters.next_msg(timeout=5)).data)
        assert "invalid RolloutState" in letter["reason"]
        assert engine.hosts[sid].deployment_id == "r-1" and sid not in engine.elsewhere
    finally:
        await letters.unsubscribe()
        await watch.stop()
        await execution_nc.drain()
        await deployer_nc.drain()

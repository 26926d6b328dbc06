"""What a replay batch waits for: the control watch holding every KV write (real NATS) and the risk snapshot
of the previous batch."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from qmp_core import bus, subjects
from qmp_core.clock import TestClock
from qmp_core.messages import RiskSnapshot, TradingState, encode
from qmp_execution.engine import EngineConfig, ExecutionEngine
from qmp_execution.handlers import ControlWatch, RiskWatch
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import connect_as

pytestmark = pytest.mark.integration


class Flat:
    lookback = 1
    leverage_limit = 1.0

    def target_weights(self, prices: object) -> object:
        return prices * 0.0


class SlowWatch(ControlWatch):
    """A watch that applies each change late, as in a loaded process (where the demo saw the race)."""

    def apply(self, key: str, value: bytes, operation: str | None, revision: int = 0,
              written_s: float | None = None) -> None:
        asyncio.get_running_loop().call_later(0.05, super().apply, key, value, operation, revision, written_s)


@pytest.fixture
async def deployer_nc(nats_credentials: NatsCredentials, operator_nc: Client) -> AsyncIterator[Client]:
    """The writer of the control bucket (which the operator's connection has declared)."""
    nc = await connect_as(nats_credentials, "deployer")
    yield nc
    await nc.drain()


def halted(sid: str, reason: str) -> bytes:
    return encode(TradingState(strategy=sid, status="HALTED", reason=reason, issued_by="test"))


async def started_watch(nc: Client, sid: str, kind: type[ControlWatch]) -> tuple[KeyValue, ExecutionEngine,
                                                                                ControlWatch]:
    """Return the control bucket, an engine hosting `sid`, and a watch of `kind` following the bucket."""
    js = nc.jetstream()
    kv = await bus.control_bucket(js)
    engine = ExecutionEngine({sid: Flat()}, EngineConfig(), TestClock(0))  # type: ignore[dict-item]
    watch = kind(kv, engine, js)
    await watch.start()
    return kv, engine, watch


async def test_catch_up_when_a_write_just_landed_then_returns_with_it_applied(deployer_nc: Client,
                                                                             unique_id: str) -> None:
    sid = unique_id
    kv, engine, watch = await started_watch(deployer_nc, sid, SlowWatch)
    await asyncio.sleep(0.1)
    try:
        for n in range(5):  # each write is read back at once, the way a replay batch follows a breaker
            await kv.put(subjects.control_key(sid, "risk"), halted(sid, f"breaker {n}"))
            last = await watch.catch_up()
            assert watch.revision >= last
            assert engine.state(sid).status == "HALTED" and engine.state(sid).reason == f"breaker {n}"
    finally:
        await watch.stop()
    assert watch.catch_up_timeouts == 0


async def test_catch_up_when_the_watch_fell_silent_then_watched_anew_and_the_write_applied(
        deployer_nc: Client, unique_id: str) -> None:
    # A watch can fall silent (seen after a nats-server restart): the batch must not trade without the halt.
    sid = unique_id
    kv, engine, watch = await started_watch(deployer_nc, sid, ControlWatch)
    await watch.stop()  # a watch that no longer follows the bucket
    await kv.put(subjects.control_key(sid, "risk"), halted(sid, "unseen"))

    started = asyncio.get_running_loop().time()
    last = await watch.catch_up(timeout_s=0.3)

    assert 0.25 <= asyncio.get_running_loop().time() - started < 2.0
    assert watch.catch_up_timeouts == 1  # the wait on the silent watch gave up once
    assert engine.state(sid).status == "HALTED" and watch.revision >= last
    await kv.put(subjects.control_key(sid, "risk"), halted(sid, "seen live"))  # and the new watch follows
    await watch.catch_up(timeout_s=2.0)
    assert engine.state(sid).reason == "seen live"
    await watch.stop()


async def test_guard_when_the_watch_falls_silent_live_then_renewed_and_the_halt_applied_within_intervals(
        deployer_nc: Client, unique_id: str) -> None:
    # Live, nothing waits on the watch before a batch: the guard finds a silent one and renews it, keeping the
    # state in force (a halt) until the new watch has delivered every value.
    sid = unique_id
    kv, engine, watch = await started_watch(deployer_nc, sid, ControlWatch)
    watch.guard(asyncio.Lock(), interval_s=0.2)
    key = subjects.control_key(sid, "risk")
    try:
        await kv.put(key, halted(sid, "first"))
        await until(lambda: engine.state(sid).reason == "first", 2.0)
        await watch._watcher._sub.unsubscribe()  # its subscription gone, as when its server died: no error
        written = asyncio.get_running_loop().time()
        await kv.put(key, halted(sid, "after the silence"))
        seen: set[str] = set()
        await until(lambda: seen.add(engine.state(sid).status) or engine.state(sid).reason == "after the silence",
                    3.0)
        took = asyncio.get_running_loop().time() - written
    finally:
        await watch.stop()
    assert watch.rewatches >= 1 and took < 1.5  # two to three intervals of 0.2 s, and the reload
    assert seen == {"HALTED"}  # the halt in force never lapsed while the watch was renewed


async def test_guard_when_the_bucket_is_quiet_then_the_watch_is_left_alone(deployer_nc: Client,
                                                                         unique_id: str) -> None:
    kv, engine, watch = await started_watch(deployer_nc, unique_id, ControlWatch)
    guard = watch.guard(asyncio.Lock(), interval_s=0.1)
    assert guard is not None and watch.guard(asyncio.Lock()) is guard  # one guard a watch
    await kv.put(subjects.control_key(unique_id, "risk"), halted(unique_id, "applied at once"))
    await asyncio.sleep(0.6)  # six checks
    assert not guard.done()  # what the service's health watches
    await watch.stop()  # and the guard stops with it
    assert guard.done() and watch.rewatches == 0 and engine.state(unique_id).reason == "applied at once"


async def until(condition: Callable[[], object], timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def risk_at(sid: str, ts_event: int) -> bytes:
    return encode(RiskSnapshot(strategy=sid, ts_event=ts_event, equity=1e6, var={}, es={"evt_99": 0.02},
                               drawdown_24h=0.0, drawdown_max=0.0, volatility_ratio=1.0, breakers=[]))


async def test_risk_catch_up_when_the_snapshot_of_the_last_batch_comes_late_then_waits_for_it() -> None:
    engine = ExecutionEngine({"s": Flat()}, EngineConfig(), TestClock(0))  # type: ignore[dict-item]
    watch = RiskWatch(None, engine)  # type: ignore[arg-type]  # catch_up reads no stream
    await watch.catch_up(timeout_s=5.0)  # risk never answered for "s": nothing to wait for
    watch._apply(risk_at("s", 1))
    engine.hosts["s"].portfolio.last_ts = 2  # batch 2 traded; risk has not revalued it yet
    asyncio.get_running_loop().call_later(0.1, watch._apply, risk_at("s", 2))

    started = asyncio.get_running_loop().time()
    await watch.catch_up(timeout_s=5.0)

    assert asyncio.get_running_loop().time() - started >= 0.09
    assert engine.hosts["s"].risk is not None and engine.hosts["s"].risk.ts_event == 2
    engine.hosts["s"].portfolio.last_ts = 3  # and no snapshot ever comes for batch 3
    await watch.catch_up(timeout_s=0.2)
    assert watch.catch_up_timeouts == 1 and watch.behind() == ["s"]


async def test_watch_when_bucket_value_corrupt_then_strategy_halted_and_value_dead_lettered(
        nats_credentials: NatsCredentials, deployer_nc: Client, operator_nc: Client, unique_id: str) -> None:
    sid = unique_id
    execution_nc = await connect_as(nats_credentials, "execution")
    letters = await operator_nc.subscribe(subjects.dlq("execution"))
    await operator_nc.flush()
    kv = await bus.control_bucket(deployer_nc.jetstream())
    engine = ExecutionEngine({sid: Flat()}, EngineConfig(), TestClock(0))  # type: ignore[dict-item]
    watch = ControlWatch(await bus.control_bucket(execution_nc.jetstream()), engine, execution_nc.jetstream())
    await watch.start()
    try:
        await kv.put(subjects.control_key(sid, "risk"), b'{"strategy": "x", "status": "PAUSED"}')
        await watch.catch_up()

        assert engine.state(sid).status == "HALTED"
        letter = json.loads((await letters.next_msg(timeout=5)).data)
        while not letter["subject"].endswith(f".{sid}.risk"):  # other tests' corrupt entries in the bucket
            letter = json.loads((await letters.next_msg(timeout=5)).data)
        assert "invalid control entry" in letter["reason"]
        assert "PAUSED" in letter["payload"]
    finally:
        await watch.stop()
        await execution_nc.drain()

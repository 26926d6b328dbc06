"""Halts first: the bucket writes take turns with halts and resumes ahead, and a resume a later halt
overtook is refused, never applied after it."""

import asyncio

import pytest
from nats.aio.client import Client

from qmp_core import bus
from qmp_core.clock import LiveClock
from qmp_core.messages import Halt, Resume, SetAllocation
from qmp_deployer.handlers import ControlHandler, ControlStore
from qmp_deployer.handlers.control import PriorityLock
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import connect_as


async def test_priority_lock_when_many_wait_then_urgent_waiters_go_first_each_in_arrival_order() -> None:
    lock = PriorityLock()
    order: list[str] = []

    async def take(name: str, urgent: bool) -> None:
        async with lock.hold(urgent):
            order.append(name)
            await asyncio.sleep(0)

    async with lock.hold(False):  # held while everyone queues
        tasks = [asyncio.create_task(take(name, name.startswith("halt"))) for name in
                 ("alloc1", "alloc2", "halt1", "alloc3", "halt2")]
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)

    assert order == ["halt1", "halt2", "alloc1", "alloc2", "alloc3"]


async def test_priority_lock_when_a_waiter_is_cancelled_then_the_lock_passes_on() -> None:
    lock = PriorityLock()
    order: list[str] = []

    async def take(name: str) -> None:
        async with lock.hold(False):
            order.append(name)

    async with lock.hold(True):
        cancelled = asyncio.create_task(take("cancelled"))
        kept = asyncio.create_task(take("kept"))
        await asyncio.sleep(0.01)
        cancelled.cancel()
    await asyncio.gather(cancelled, kept, return_exceptions=True)

    assert order == ["kept"]
    async with lock.hold(False):  # free again
        order.append("after")
    assert order == ["kept", "after"]


@pytest.mark.integration
async def test_apply_when_a_later_halt_overtook_a_resume_then_the_resume_is_refused_and_the_halt_stays(
        nats_credentials: NatsCredentials, operator_nc: Client, unique_id: str) -> None:
    nc = await connect_as(nats_credentials, "deployer")
    try:
        js = nc.jetstream()
        store = ControlStore(await bus.control_bucket(js))
        await store.load()
        handler = ControlHandler(js, store, LiveClock(), pool=None)
        await handler.apply(unique_id, Halt(reason="first", command_id="h1"), "operator", arrival=1)

        # the resume arrived as number 2, a new halt as number 3; the halt reached the bucket first
        await handler.apply(unique_id, Halt(reason="again", command_id="h3"), "operator", arrival=3)
        resumed = await handler.apply(unique_id, Resume(command_id="r2"), "operator", arrival=2)
        later = await handler.apply(unique_id, Resume(command_id="r4"), "operator", arrival=4)
        other = await handler.apply(unique_id, SetAllocation(allocation=0.5, command_id="a0"), "operator", arrival=0)
    finally:
        await nc.close()

    assert resumed.accepted is False and "halt sent after this resume" in resumed.reason
    assert resumed.state is not None and resumed.state.status == "HALTED"
    assert later.accepted is True and later.state is not None and later.state.status == "ACTIVE"
    assert other.accepted is True  # only resumes can be overtaken in a way that matters

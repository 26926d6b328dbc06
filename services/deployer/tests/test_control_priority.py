"""Halts first: commands are decided in batches with halts and resumes ahead, and a resume a later halt
overtook is refused, never applied after it."""

import asyncio

import msgspec
import pytest
from nats.aio.client import Client

from qmp_core import bus
from qmp_core.clock import LiveClock
from qmp_core.messages import Halt, Resume, SetAllocation
from qmp_deployer.handlers import ControlHandler, ControlStore
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import connect_as


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


@pytest.mark.integration
async def test_apply_when_commands_arrive_together_then_each_reply_tells_the_state_after_its_own_command(
        nats_credentials: NatsCredentials, unique_id: str) -> None:
    nc = await connect_as(nats_credentials, "deployer")
    try:
        js = nc.jetstream()
        store = ControlStore(await bus.control_bucket(js))
        await store.load()
        handler = ControlHandler(js, store, LiveClock(), pool=None)
        allocations = [round(0.01 * (i + 1), 2) for i in range(60)]
        replies = await asyncio.gather(
            *(handler.apply(unique_id, SetAllocation(allocation=a, command_id=f"a{i}"), "operator", arrival=i)
              for i, a in enumerate(allocations)),
            handler.apply(unique_id, Halt(reason="stop", command_id="h"), "operator", arrival=60),
            handler.apply(unique_id, SetAllocation(allocation=0.9, command_id="a0"), "operator", arrival=61),
        )
        written = await (await bus.control_bucket(js)).get(f"{unique_id}.operator")
        await handler.close()
    finally:
        await nc.close()

    *burst, halt, repeat = replies
    assert [reply.state.allocation for reply in burst if reply.state] == allocations
    assert all(reply.accepted and not reply.duplicate for reply in burst)
    assert halt.accepted and halt.state is not None and halt.state.status == "HALTED"
    assert repeat.duplicate and repeat.state is not None and repeat.state.allocation == 0.01  # the first a0's
    entry = msgspec.json.decode(written.value)
    assert entry["status"] == "HALTED" and entry["allocation"] == allocations[-1]

"""Fuzzing the control subject: whatever arrives, the deployer answers with a decision (a refusal always
says why), never raises, and the control state stays readable."""

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmp_core import bus
from qmp_core.clock import LiveClock
from qmp_core.messages import ControlReply, codec
from qmp_deployer.handlers import ControlHandler, ControlStore
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import connect_as

pytestmark = pytest.mark.integration

COMMANDS = ["halt", "resume", "set_allocation", "reduce_order_size", "defensive", "release_safe_mode", "kill", ""]
values = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False),
                   st.text(max_size=50), st.lists(st.integers(), max_size=3))
commands = st.fixed_dictionaries({"command": st.sampled_from(COMMANDS)}, optional={
    "reason": st.one_of(st.text(max_size=1_200), values), "mode": st.sampled_from(["safe", "normal", "x", 1]),
    "allocation": values, "size_multiplier": values, "factor": values, "on": values,
    "issued_by": st.sampled_from(["operator", "risk", "deployer", "me", 3]),
    "command_id": st.one_of(st.text(max_size=200), values), "extra": values})
payloads = st.one_of(commands.map(lambda c: json.dumps(c).encode()), st.binary(max_size=300),
                     st.text(max_size=100).map(str.encode))
senders = st.sampled_from(["operator", "risk", "deployer", "alice", "x.y", ""])


@pytest.fixture(scope="module")
def declared(nats_credentials: NatsCredentials) -> None:
    """The streams and buckets, declared by the admin (once: a Hypothesis test takes no per-test fixture)."""
    async def declare() -> None:
        admin = await connect_as(nats_credentials, "operator")
        try:
            await bus.declare(admin.jetstream())
        finally:
            await admin.close()

    asyncio.run(declare())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(senders, payloads, st.booleans()), min_size=1, max_size=6))
def test_control_when_anything_arrives_then_answered_with_a_reason_and_state_readable(
        nats_credentials: NatsCredentials, declared: None, messages: list[tuple[str, bytes, bool]]) -> None:
    async def run() -> list[ControlReply]:
        nc = await connect_as(nats_credentials, "deployer")
        try:
            js = nc.jetstream()
            store = ControlStore(await bus.control_bucket(js))
            await store.load()
            handler = ControlHandler(js, store, LiveClock(), pool=None)
            replies = []
            for sender, payload, urgent in messages:  # urgent: halts' own lane
                subject = f"qmp.control.{sender}.fuzzed" if sender else "qmp.control.fuzzed"
                subject += ".urgent" if urgent and sender else ""
                replies.append(codec(ControlReply).decode(await handler.handle(subject, payload)))
            state = store.entries.effective("fuzzed")
            assert state.status in ("ACTIVE", "REDUCING", "HALTED")
            return replies
        finally:
            await nc.close()

    replies = asyncio.run(run())
    assert len(replies) == len(messages)
    assert all(reply.accepted or reply.reason for reply in replies)
    accepted = [(sender, payload, urgent) for (sender, payload, urgent), reply in zip(messages, replies, strict=True)
                if reply.accepted]
    assert {sender for sender, _, _ in accepted} <= {"operator", "risk", "deployer", "alice"}  # a bad subject: no
    assert all(json.loads(payload)["command"] in ("halt", "kill") for _, payload, urgent in accepted if urgent)

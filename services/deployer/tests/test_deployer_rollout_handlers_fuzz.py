"""Fuzzing the deploy subject: whatever arrives on `qmp.deploy.<strategy>.cmd`, the leading deployer answers
with a decision (a refusal always says why), never raises, keeps every rollout readable, and what it keeps
per rollout stays bounded however many commands arrive."""

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_deployer_rollout_handlers import PLAN, wait_lease_free

from qmp_core import bus, subjects
from qmp_core.clock import LiveClock
from qmp_core.messages import DeployReply, codec
from qmp_deployer.engine.plan import parse_plan
from qmp_deployer.engine.rollout import RECENT_COMMANDS
from qmp_deployer.handlers import ControlHandler, ControlStore
from qmp_deployer.handlers.rollout import RolloutOptions, RolloutService
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import connect_as

pytestmark = pytest.mark.integration

VERBS = ["deploy", "promote", "pause", "resume", "abort", "rollback", "halt", "status", "unknown", ""]
values = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False),
                   st.text(max_size=40), st.lists(st.integers(), max_size=3))
commands = st.fixed_dictionaries({"verb": st.sampled_from(VERBS)}, optional={
    "plan": st.one_of(st.sampled_from(["itest", "default", "nope"]), values),
    "env": st.sampled_from(["paper", "live", "", "prod", 3]), "allocation": values, "auto": values,
    "full": values, "expected_phase": st.one_of(st.sampled_from(["paper", "live_10", ""]), values),
    "reason": st.one_of(st.text(max_size=1_200), values), "issued_by": values,
    "command_id": st.one_of(st.text(max_size=200), values), "extra": values})
# well-formed verbs on the test plan, so rollouts start and move and the engine is reached, not only decoding
valid = st.fixed_dictionaries({"verb": st.sampled_from(["deploy", "promote", "pause", "resume", "rollback",
                                                        "abort", "halt", "status"]), "plan": st.just("itest")},
                              optional={"env": st.sampled_from(["paper", "live"]), "full": st.booleans(),
                                        "command_id": st.sampled_from(["c1", "c2", "c3"]),
                                        "allocation": st.sampled_from([0.1, 0.5, 1.0])})
payloads = st.one_of(commands.map(lambda c: json.dumps(c).encode()), valid.map(lambda c: json.dumps(c).encode()),
                     st.binary(max_size=300), st.text(max_size=100).map(str.encode))
strategies = st.sampled_from(["fuzz_a", "fuzz_b", "x.y", "", "ALL", "a" * 300])


class Leader:
    """A deployer's rollout service in a thread of its own loop, holding the lease for the whole module."""

    def __init__(self, nats_credentials: NatsCredentials) -> None:
        self.loop = asyncio.new_event_loop()
        self.credentials = nats_credentials

    def run(self, coroutine: object) -> object:
        return self.loop.run_until_complete(coroutine)  # type: ignore[arg-type]

    async def start(self) -> None:
        await wait_lease_free(self.credentials)
        self.nc = await connect_as(self.credentials, "deployer")
        js = self.nc.jetstream()
        store = ControlStore(await bus.control_bucket(js))
        await store.load()
        control = ControlHandler(js, store, LiveClock(), pool=None)
        plan = parse_plan(PLAN)
        options = RolloutOptions(instance_id="fuzz-" + uuid.uuid4().hex[:6], lease_ttl_s=120.0)
        self.service = RolloutService(js, await js.key_value(subjects.KV_ROLLOUTS), control, LiveClock(),
                                      LiveClock(), {plan.name: plan}, {}, None, options)
        await self.service.start()
        for _ in range(150):
            if await self.service.refresh_lease():
                self.before = set(self.service.states)  # rollouts of other tests on the shared server
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the fuzzing deployer never got the lease")

    async def stop(self) -> None:
        await self.service.stop()
        await self.nc.close()


@pytest.fixture(scope="module")
def leader(nats_credentials: NatsCredentials) -> Iterator[Leader]:
    leader = Leader(nats_credentials)
    leader.run(leader.start())
    yield leader
    leader.run(leader.stop())
    leader.loop.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(strategies, payloads), min_size=1, max_size=6))
def test_deploy_when_anything_arrives_then_answered_with_a_reason_and_rollouts_stay_bounded(
        leader: Leader, messages: list[tuple[str, bytes]]) -> None:
    async def run() -> list[DeployReply]:
        replies = []
        for strategy, payload in messages:
            subject = f"qmp.deploy.{strategy}.cmd" if strategy else "qmp.deploy.cmd"
            replies.append(codec(DeployReply).decode(await leader.service.handle_command(subject, payload)))
        return replies

    replies = leader.run(run())
    for reply in replies:  # type: ignore[union-attr]
        event("accepted" if reply.accepted else reply.reason.split(":")[0][:40])
    assert len(replies) == len(messages)  # type: ignore[arg-type]
    assert all(reply.accepted or reply.reason for reply in replies)  # type: ignore[union-attr]
    accepted = {strategy for (strategy, _), reply in zip(messages, replies, strict=True)  # type: ignore[call-overload]
                if reply.accepted}
    assert accepted <= {"fuzz_a", "fuzz_b"}  # a malformed subject is refused
    # memory: a rollout only for a strategy deployed here, each remembering a bounded window of command ids
    assert set(leader.service.states) <= leader.before | {"fuzz_a", "fuzz_b"}
    for state in leader.service.states.values():
        assert len(state.recent_commands) <= RECENT_COMMANDS

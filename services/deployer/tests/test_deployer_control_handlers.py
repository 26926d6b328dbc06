"""The control contract over a real nats-server, as a plain nats-py client that knows only the README."""

import asyncio
import json

import asyncpg
import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from qmp_core import bus, subjects
from qmp_core.clock import LiveClock
from qmp_core.messages import Halt, Resume, SetAllocation
from qmp_deployer.app import create_app
from qmp_deployer.handlers import ControlHandler, ControlStore
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import connect_as, settings_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def deployer(nats_credentials, database_url, operator_nc):
    app = create_app(settings_for(nats_credentials, "deployer", database_url, run_dir="/tmp/qmp-test-run"))
    async with app:
        yield app


async def request(nc, strategy: str, body: dict, sender: str = "operator") -> dict:
    reply = await nc.request(subjects.control(strategy, sender), json.dumps(body).encode(), timeout=5)
    return json.loads(reply.data)


async def test_halt_when_requested_then_reply_accepted_and_state_in_kv(deployer, operator_nc, unique_id):
    reply = await request(operator_nc, unique_id, {"command": "halt", "reason": "test", "command_id": "c1"})
    assert reply["accepted"] is True
    assert reply["state"]["status"] == "HALTED"
    assert reply["state"]["reason"] == "test"
    kv = await bus.control_bucket(operator_nc.jetstream())
    entry = await kv.get(f"{unique_id}.operator")
    assert json.loads(entry.value)["status"] == "HALTED"


async def test_safe_resume_when_operator_had_cut_order_size_then_the_cut_is_back_after_the_release(
        deployer, operator_nc, unique_id):
    # issue 11 #1, as an operator sees it: reduce_order_size 0.3, halt, resume --safe, the safe mode ends.
    for body in ({"command": "reduce_order_size", "size_multiplier": 0.3}, {"command": "halt", "reason": "check"},
                 {"command": "resume", "mode": "safe"}):
        assert (await request(operator_nc, unique_id, body))["accepted"] is True

    released = await request(operator_nc, unique_id, {"command": "release_safe_mode"})

    assert released["accepted"] is True
    assert (released["state"]["status"], released["state"]["safe_mode"]) == ("ACTIVE", False)
    assert released["state"]["size_multiplier"] == 0.3


async def test_halt_when_command_id_repeated_then_applied_once(deployer, operator_nc, unique_id):
    body = {"command": "halt", "reason": "once", "command_id": "same"}
    first = await request(operator_nc, unique_id, body)
    kv = await bus.control_bucket(operator_nc.jetstream())
    revision = (await kv.get(f"{unique_id}.operator")).revision
    second = await request(operator_nc, unique_id, body)
    assert first["duplicate"] is False
    assert second["duplicate"] is True
    assert (await kv.get(f"{unique_id}.operator")).revision == revision


async def test_control_when_invalid_then_rejected_with_reason_and_dead_lettered(deployer, operator_nc, unique_id):
    js = operator_nc.jetstream()
    dlq = await js.subscribe("qmp.dlq.deployer", ordered_consumer=True,
                             deliver_policy=nats.js.api.DeliverPolicy.NEW)
    reply = await request(operator_nc, unique_id, {"command": "set_allocation", "allocation": 1.5})
    assert reply["accepted"] is False
    assert "allocation" in reply["reason"]
    garbage = await operator_nc.request(subjects.control(unique_id), b"{not json", timeout=5)
    assert json.loads(garbage.data)["accepted"] is False
    letters = [json.loads((await dlq.next_msg(timeout=5)).data) for _ in range(2)]
    assert all(letter["reason"].startswith("invalid control command") for letter in letters)
    kv = await bus.control_bucket(js)
    with pytest.raises(KeyNotFoundError):
        await kv.get(f"{unique_id}.operator")


async def test_state_when_halted_then_published_on_state_subject(deployer, operator_nc, unique_id):
    sub = await operator_nc.subscribe(f"qmp.state.{unique_id}")
    await request(operator_nc, unique_id, {"command": "halt", "reason": "watch"})
    state = json.loads((await sub.next_msg(timeout=5)).data)
    assert state["status"] == "HALTED"
    await request(operator_nc, unique_id, {"command": "resume", "mode": "normal"})
    state = json.loads((await sub.next_msg(timeout=5)).data)
    assert state["status"] == "ACTIVE"


async def test_control_when_published_by_execution_then_never_arrives(deployer, nats_credentials, operator_nc,
                                                                     unique_id):
    user, _password = nats_credentials.for_user("execution")
    if not user:
        pytest.skip("the running NATS server has no per-service users")
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    execution = await nats_credentials.connect(user, error_cb=on_error)
    for sender in ("execution", "operator"):  # neither its own name nor another's
        await execution.publish(subjects.control(unique_id, sender), b'{"command":"resume"}')
    await execution.flush()
    await asyncio.sleep(0.2)
    await execution.close()
    assert any("permissions violation" in str(error) for error in errors)
    kv = await bus.control_bucket(operator_nc.jetstream())
    with pytest.raises(KeyNotFoundError):
        await kv.get(f"{unique_id}.operator")


async def test_halt_when_command_id_repeated_after_restart_then_applied_once_and_audited_once(
        nats_credentials, database_url, operator_nc, unique_id):
    settings = settings_for(nats_credentials, "deployer", database_url, run_dir="/tmp/qmp-test-run")
    body = {"command": "halt", "reason": "before restart", "command_id": "restart-1"}
    async with create_app(settings):
        first = await request(operator_nc, unique_id, body)
    kv = await bus.control_bucket(operator_nc.jetstream())
    revision = (await kv.get(f"{unique_id}.operator")).revision
    async with create_app(settings):
        again = await request(operator_nc, unique_id, body)
    assert first["accepted"] is True and first["duplicate"] is False
    assert again["duplicate"] is True
    assert again["state"]["reason"] == "before restart"
    assert (await kv.get(f"{unique_id}.operator")).revision == revision
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetchval(
            "SELECT count(*) FROM control_audit WHERE strategy = $1 AND command_id = 'restart-1'", unique_id)
    finally:
        await connection.close()
    assert rows == 1


async def test_two_deployers_when_one_halts_then_the_others_reply_and_state_carry_the_halt(
    nats_credentials, database_url, operator_nc, risk_nc, unique_id,
):
    settings = settings_for(nats_credentials, "deployer", database_url, run_dir="/tmp/qmp-test-run")
    first = create_app(settings, instance_id=f"{unique_id}-a", lease_ttl_s=1.0)  # a lease left behind expires
    second = create_app(settings, instance_id=f"{unique_id}-b", lease_ttl_s=1.0)
    states = await operator_nc.subscribe(f"qmp.state.{unique_id}")
    async with first, second:
        replies = [await request(operator_nc, unique_id, {"command": "set_allocation", "allocation": 0.5,
                                                          "command_id": f"a{n}"}) for n in range(6)]
        # The risk service's key: no later operator write conflicts with it, only a watch brings it over.
        halt = await request(risk_nc, unique_id, {"command": "halt", "reason": "one instance", "command_id": "h"},
                             sender="risk")
        await asyncio.sleep(0.2)  # the other instance's watch
        # The queue group spreads requests over both instances: whichever answers, it sees the halt.
        after = [await request(operator_nc, unique_id, {"command": "set_allocation", "allocation": 0.25,
                                                        "command_id": f"b{n}"}) for n in range(6)]
        published = [json.loads((await states.next_msg(timeout=5)).data) for _ in range(13)]
    assert all(r["accepted"] for r in [*replies, halt, *after])
    assert [r["state"]["status"] for r in after] == ["HALTED"] * 6
    assert [r["state"]["allocation"] for r in after] == [0.25] * 6
    assert [s["status"] for s in published[7:]] == ["HALTED"] * 6


@pytest.fixture
async def risk_nc(nats_credentials):
    user, _password = nats_credentials.for_user("risk")
    if not user:
        pytest.skip("the running NATS server has no per-service users")
    nc = await nats_credentials.connect(user)
    yield nc
    await nc.close()


async def test_control_when_risk_claims_to_be_the_operator_then_refused_and_the_operator_s_halt_stays(
        deployer, operator_nc, risk_nc, unique_id, database_url):
    # issue 13: risk's credentials could lift an operator's halt by writing `issued_by: operator`.
    halted = await request(operator_nc, unique_id, {"command": "halt", "reason": "operator's"})
    assert halted["accepted"], halted

    claimed = await request(risk_nc, unique_id, {"command": "resume", "issued_by": "operator"}, sender="risk")
    own = await request(risk_nc, unique_id, {"command": "reduce_order_size", "size_multiplier": 0.5},
                        sender="risk")  # its own entry: allowed

    assert claimed["accepted"] is False and "'risk' may write the 'risk' entry only" in claimed["reason"]
    assert own["accepted"] is True and (own["state"]["status"], own["state"]["reason"]) == ("HALTED", "operator's")
    kv = await bus.control_bucket(operator_nc.jetstream())
    assert json.loads((await kv.get(f"{unique_id}.risk")).value)["size_multiplier"] == 0.5
    connection = await asyncpg.connect(database_url)
    try:
        for _ in range(50):  # the database copy of the audit is written after the reply
            rows = await connection.fetch("SELECT sender, command->>'issued_by' AS entry FROM control_audit "
                                          "WHERE strategy = $1 ORDER BY id", unique_id)
            if len(rows) == 2:
                break
            await asyncio.sleep(0.1)
    finally:
        await connection.close()
    assert [(row["sender"], row["entry"]) for row in rows] == [("operator", "operator"), ("risk", "risk")]


async def test_control_when_the_operator_publishes_as_risk_then_the_server_refuses(
        deployer, nats_credentials, unique_id):
    user, _password = nats_credentials.for_user("operator")
    if not user:
        pytest.skip("the running NATS server has no per-service users")
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    operator = await nats_credentials.connect(user, error_cb=on_error)
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await operator.request(subjects.control(unique_id, "risk"), b'{"command": "halt", "reason": "r"}',
                               timeout=0.5)
    await operator.close()
    assert any("permissions violation" in str(error) for error in errors)


async def test_control_when_a_named_operator_halts_then_the_operators_entry_and_the_audit_names_her(
        deployer, nats_credentials, operator_nc, unique_id, database_url):
    user, _password = nats_credentials.for_user("alice")
    if not user:
        pytest.skip("the running NATS server has no per-service users")
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    alice = await nats_credentials.connect(user, error_cb=on_error)
    try:
        halted = await request(alice, unique_id, {"command": "halt", "reason": "alice saw it"}, sender="alice")
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):  # not under another's name
            await alice.request(subjects.control(unique_id, "operator"), b'{"command": "resume"}', timeout=0.5)
        resumed = await request(operator_nc, unique_id, {"command": "resume"})  # the operators share one entry
    finally:
        await alice.close()

    assert halted["accepted"] is True and halted["state"]["status"] == "HALTED"
    assert resumed["accepted"] is True and resumed["state"]["status"] == "ACTIVE"
    assert any("permissions violation" in str(error) for error in errors)
    connection = await asyncpg.connect(database_url)
    try:
        for _ in range(50):
            rows = await connection.fetch("SELECT sender, command->>'issued_by' AS entry FROM control_audit "
                                          "WHERE strategy = $1 ORDER BY id", unique_id)
            if len(rows) == 2:
                break
            await asyncio.sleep(0.1)
    finally:
        await connection.close()
    assert [(row["sender"], row["entry"]) for row in rows] == [("alice", "operator"), ("operator", "operator")]


async def test_halt_when_sent_on_its_lane_during_a_burst_then_answered_before_the_burst_drains(
        deployer, nats_credentials, operator_nc, unique_id):
    burst = 2_000
    sender = await nats_credentials.connect("operator")  # the burst's own connection, as other clients'
    answered: list[float] = []

    async def allocation(index: int) -> None:
        body = {"command": "set_allocation", "allocation": 0.5, "command_id": f"{unique_id}-{index}"}
        await sender.request(subjects.control(f"{unique_id}b{index % 50}"), json.dumps(body).encode(), timeout=60)
        answered.append(asyncio.get_running_loop().time())

    requests = [asyncio.create_task(allocation(index)) for index in range(burst)]
    await asyncio.sleep(0.2)  # the burst is on its way to (and queued in) the deployer's main lane
    halt = {"command": "halt", "reason": "urgent", "command_id": f"{unique_id}-halt"}
    reply = json.loads((await operator_nc.request(subjects.control(unique_id, urgent=True),
                                                  json.dumps(halt).encode(), timeout=10)).data)
    answered_before_the_halt = len(answered)
    await asyncio.gather(*requests)
    await sender.close()

    assert reply["accepted"] is True and reply["state"]["status"] == "HALTED"
    assert answered_before_the_halt < burst // 2, f"the halt waited for {answered_before_the_halt} of {burst}"


async def test_urgent_lane_when_anything_but_a_halt_arrives_then_refused_and_told_where_to_send_it(
        deployer, operator_nc, unique_id):
    body = {"command": "resume", "mode": "normal", "command_id": f"{unique_id}-r"}
    reply = json.loads((await operator_nc.request(subjects.control(unique_id, urgent=True),
                                                  json.dumps(body).encode(), timeout=5)).data)

    assert reply["accepted"] is False
    assert "only halts travel the urgent lane" in reply["reason"] and subjects.control(unique_id) in reply["reason"]


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

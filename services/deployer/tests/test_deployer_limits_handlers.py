"""Pre-trade limits requests against real NATS and PostgreSQL: an operator's request is journaled, written to
the limits bucket and audited in the database, once per command id; a service cannot send one at all."""

import asyncio

import asyncpg
import msgspec
import nats
import pytest

from qmp_core import subjects
from qmp_core.messages import LimitsChanged, LimitsEntry, LimitsReply, PreTradeLimits, SetLimits, codec, encode
from qmp_deployer.app import create_app
from qmp_ops.testing import connect_as, settings_for

pytestmark = pytest.mark.integration
WAIT_S = 10.0


@pytest.fixture
async def deployer(nats_credentials, database_url, operator_nc):  # type: ignore[no-untyped-def]
    app = create_app(settings_for(nats_credentials, "deployer", database_url, run_dir="/tmp/qmp-test-run"))
    async with app:
        yield app


async def ask(nc: nats.NATS, strategy: str, sender: str, request: SetLimits | bytes) -> LimitsReply:
    data = request if isinstance(request, bytes) else encode(request)
    reply = await nc.request(subjects.limits(strategy, sender), data, timeout=WAIT_S)
    return codec(LimitsReply).decode(reply.data)


async def entry_of(nc: nats.NATS, strategy: str) -> LimitsEntry | None:
    kv = await nc.jetstream().key_value(subjects.KV_LIMITS)
    try:
        value = (await kv.get(strategy)).value
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return None
    return codec(LimitsEntry).decode(value) if value else None


async def test_set_limits_when_an_operator_asks_then_bucket_audit_stream_and_database_hold_it_once(
        deployer, nats_credentials, operator_nc, database_url, unique_id) -> None:  # type: ignore[no-untyped-def]
    alice = await connect_as(nats_credentials, "alice")  # a named operator: the audit says who
    audit = await operator_nc.subscribe(subjects.audit_limits(unique_id))
    request = SetLimits(limits=PreTradeLimits(max_order_notional=250_000.0, restricted_symbols=["GME"]),
                        command_id=f"{unique_id}-1", reason="launch week")
    try:
        first = await ask(alice, unique_id, "alice", request)
        again = await ask(alice, unique_id, "alice", request)  # a retry of the same request
        stored = await entry_of(operator_nc, unique_id)
        journaled = codec(LimitsChanged).decode((await audit.next_msg(timeout=WAIT_S)).data)
    finally:
        await audit.unsubscribe()
        await alice.close()
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT sender, reason, changed, after FROM limits_audit WHERE strategy = $1",
                                      unique_id)
    finally:
        await connection.close()

    assert first.accepted and first.changed == ["max_order_notional", "restricted_symbols"]
    assert again.accepted and again.duplicate and again.entry == first.entry
    assert stored is not None and stored.limits == request.limits and stored.sender == "alice"
    assert (journaled.sender, journaled.changed, journaled.before) == ("alice", first.changed, PreTradeLimits())
    assert [(r["sender"], r["reason"], list(r["changed"])) for r in rows] == [
        ("alice", "launch week", ["max_order_notional", "restricted_symbols"])]
    assert msgspec.json.decode(rows[0]["after"]) == {"max_order_notional": 250_000.0, "restricted_symbols": ["GME"]}


async def test_set_limits_when_none_given_then_the_strategys_entry_is_removed_and_a_new_one_can_follow(
        deployer, operator_nc, unique_id) -> None:  # type: ignore[no-untyped-def]
    await ask(operator_nc, unique_id, "operator", SetLimits(limits=PreTradeLimits(max_order_rate=5), command_id="a"))

    removed = await ask(operator_nc, unique_id, "operator", SetLimits(command_id=f"{unique_id}-b"))
    gone = await entry_of(operator_nc, unique_id)
    again = await ask(operator_nc, unique_id, "operator", SetLimits(limits=PreTradeLimits(max_order_rate=7),
                                                                     command_id=f"{unique_id}-c"))

    assert removed.accepted and removed.entry is None and removed.changed == ["max_order_rate"] and gone is None
    assert again.accepted and (await entry_of(operator_nc, unique_id)).limits.max_order_rate == 7  # type: ignore[union-attr]


async def test_set_limits_when_invalid_then_refused_with_the_reason_and_nothing_written(
        deployer, operator_nc, unique_id) -> None:  # type: ignore[no-untyped-def]
    negative = await ask(operator_nc, unique_id, "operator", b'{"limits": {"max_order_notional": -1}}')
    unknown = await ask(operator_nc, unique_id, "operator", b'{"limits": {"max_leverage": 3}}')

    assert not negative.accepted and "max_order_notional" in negative.reason and ">= 0.0" in negative.reason
    assert not unknown.accepted and "max_leverage" in unknown.reason
    assert await entry_of(operator_nc, unique_id) is None


@pytest.mark.parametrize("service", ["risk", "execution"])
async def test_set_limits_when_a_service_sends_under_any_name_then_the_server_drops_it(
        deployer, nats_credentials, operator_nc, unique_id, service) -> None:  # type: ignore[no-untyped-def]
    nc = await connect_as(nats_credentials, service)
    try:
        for sender in (service, "operator"):
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                await nc.request(subjects.limits(unique_id, sender),
                                 encode(SetLimits(limits=PreTradeLimits(max_order_rate=0))), timeout=1.0)
        await asyncio.sleep(0.1)
    finally:
        await nc.close()

    assert await entry_of(operator_nc, unique_id) is None

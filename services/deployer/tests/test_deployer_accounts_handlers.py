"""Accounts over a real nats-server and PostgreSQL: an operator's request is journaled, written to the accounts
bucket and audited in the database once per command id; a service cannot send one; and the deployer refuses a
promotion that would make an account's live allocations exceed its capital, naming the figures."""

import asyncio

import asyncpg
import msgspec
import nats
import pytest
from deployer_stack import STEP, T0, publish_snapshot, request

from qmp_core import subjects
from qmp_core.messages import Account, AccountChanged, AccountReply, SetAccount, codec, encode
from qmp_core.rollout_state import phase_name
from qmp_ops.cli.accounts import read_accounts, read_changes
from qmp_ops.testing import connect_as, operator_connection

pytestmark = pytest.mark.integration
WAIT_S = 10.0


async def ask(nc: nats.NATS, account: str, sender: str, request_: SetAccount) -> AccountReply:
    reply = await nc.request(subjects.accounts(account, sender), encode(request_), timeout=WAIT_S)
    return codec(AccountReply).decode(reply.data)


async def test_add_account_when_an_operator_asks_then_bucket_audit_stream_and_database_hold_it_once(
        deployer, nats_credentials, operator_nc, database_url, unique_id) -> None:  # type: ignore[no-untyped-def]
    alice = await connect_as(nats_credentials, "alice")
    request_ = SetAccount(venue="alpaca", currency="USD", capital=250_000.0, command_id=f"{unique_id}-1",
                          reason="launch")
    try:
        first = await ask(alice, unique_id, "alice", request_)
        again = await ask(alice, unique_id, "alice", request_)
        changed = await ask(alice, unique_id, "alice", SetAccount(venue="alpaca", capital=300_000.0,
                                                                 command_id=f"{unique_id}-2"))
    finally:
        await alice.close()
    connection = operator_connection(nats_credentials, database_url=database_url)
    accounts, _ = await read_accounts(connection)
    journal = await read_changes(connection, unique_id, 10)
    db = await asyncpg.connect(database_url)
    try:
        rows = await db.fetch("SELECT sender, reason, before, after FROM account_audit WHERE account = $1 ORDER BY id",
                              unique_id)
    finally:
        await db.close()

    assert first.accepted and first.account is not None and first.account.capital == 250_000.0
    assert again.accepted and again.duplicate and again.account == first.account
    assert changed.accepted and accounts[unique_id].capital == 300_000.0 and accounts[unique_id].sender == "alice"
    assert [(c.before.capital if c.before else None, c.after.capital if c.after else None) for c in journal] == [
        (None, 250_000.0), (250_000.0, 300_000.0)]
    assert [(r["sender"], r["reason"]) for r in rows] == [("alice", "launch"), ("alice", "")]
    assert rows[0]["before"] is None and msgspec.json.decode(rows[1]["after"])["capital"] == 300_000.0


async def test_account_request_when_published_by_a_service_then_never_arrives(
        deployer, nats_credentials, operator_nc, unique_id) -> None:  # type: ignore[no-untyped-def]
    if not nats_credentials.for_user("execution")[0]:
        pytest.skip("the running NATS server has no per-service users")
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    execution = await nats_credentials.connect("execution", error_cb=on_error)
    await execution.publish(subjects.accounts(unique_id, "execution"), encode(SetAccount(capital=1e9)))
    await execution.flush()
    await asyncio.sleep(0.2)
    await execution.close()
    accounts, _ = await read_accounts(operator_connection(nats_credentials))
    assert any("permissions violation" in str(error) for error in errors)
    assert unique_id not in accounts


async def walk(risk_nc, operator_nc, strategies: list[str], ts: int, steps: int) -> int:  # type: ignore[no-untyped-def]
    """Advance event time by `steps` snapshots of each strategy; return the last event time."""
    for _ in range(steps):
        ts += STEP
        for strategy in strategies:
            await publish_snapshot(risk_nc, operator_nc, strategy, ts)
    return ts


async def test_promotion_when_the_account_would_be_exceeded_then_refused_until_another_strategy_frees_capital(
        deployer, operator_nc, risk_nc, nats_credentials, unique_id) -> None:  # type: ignore[no-untyped-def]
    account, first, second = f"{unique_id}-acct", f"{unique_id}-a", f"{unique_id}-b"
    added = await ask(operator_nc, account, "operator", SetAccount(capital=100_000.0, command_id=f"{unique_id}-add"))
    assert added.accepted, added.reason
    unknown = await request(operator_nc, first, {"verb": "deploy", "plan": "itest", "account": f"{unique_id}-none"})
    over = await request(operator_nc, first, {"verb": "deploy", "plan": "itest", "account": account,
                                               "budget": 150_000.0})
    for strategy in (first, second):  # each may use all of the account's capital; together they may not
        reply = await request(operator_nc, strategy, {"verb": "deploy", "plan": "itest", "confirm_live": True,
                                                       "account": account, "command_id": f"{strategy}-go"})
        assert reply["accepted"], reply
    ts = await walk(risk_nc, operator_nc, [first, second], T0, 7)  # both soaked in paper: live_10, 20,000 each
    connection = operator_connection(nats_credentials)
    _, rollouts = await read_accounts(connection)
    assert [phase_name(rollouts[s]) for s in (first, second)] == ["live_10", "live_10"]

    ts = await walk(risk_nc, operator_nc, [first], ts, 6)  # first soaked in live_10; 100% would not fit
    refused = await request(operator_nc, first, {"verb": "promote", "full": True, "expected_phase": "live_10"})
    lower = await ask(operator_nc, account, "operator", SetAccount(capital=30_000.0, command_id=f"{unique_id}-low"))
    remove = await ask(operator_nc, account, "operator", SetAccount(remove=True, command_id=f"{unique_id}-rm"))
    aborted = await request(operator_nc, second, {"verb": "abort", "reason": "make room"})
    promoted = await request(operator_nc, first, {"verb": "promote", "full": True, "expected_phase": "live_10"})
    accounts, rollouts = await read_accounts(connection)

    assert not unknown["accepted"] and "does not exist" in unknown["reason"]
    assert not over["accepted"] and "over account" in over["reason"]
    assert not refused["accepted"]
    assert refused["reason"] == (f"promotion refused: capital: account {account} would hold 120,000.00 USD of live "
                                 "allocations, over its capital of 100,000.00 (20,000.00 held by its other "
                                 f"strategies, 100,000.00 asked by {first})")
    assert not lower.accepted and "below the 40,000.00" in lower.reason
    assert not remove.accepted and "traded from by" in remove.reason
    assert aborted["accepted"] and promoted["accepted"], (aborted, promoted)
    assert phase_name(rollouts[first]) == "live_100" and rollouts[first].budget == 100_000.0
    assert added.account is not None
    assert accounts[account] == Account(account=account, venue="paper", currency="USD", capital=100_000.0,
                                        sender="operator", command_id=f"{unique_id}-add",
                                        ts_event=added.account.ts_event)
    journal = await read_changes(connection, account, 10)
    assert [c.after.capital if c.after else None for c in journal] == [100_000.0]  # refusals change nothing
    assert all(isinstance(c, AccountChanged) for c in journal)


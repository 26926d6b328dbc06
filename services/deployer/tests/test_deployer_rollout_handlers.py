"""Rollouts over a real nats-server and PostgreSQL: the deploy contract as plain JSON, event time soak,
rollback, the audit trail, the lease, and crash-resume (state reloaded from KV mid-soak, and the deployer
process killed with SIGKILL mid-soak)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import nats
import pytest
from deployer_stack import (
    PLAN,
    STEP,
    T0,
    connect_as,
    control_entry,
    publish_snapshot,
    request,
    risk_snapshot,
    rollout_of,
    snapshot,
    wait_for,
    wait_lease_free,
)

from qmp_core import bus, subjects
from qmp_core.clock import NS_PER_SECOND, LiveClock, ReplayClock, TestClock
from qmp_core.db import connect_pool
from qmp_core.messages import (
    BatchEvents,
    BrokerCommand,
    BrokerReply,
    Fill,
    RolloutState,
    codec,
    encode,
)
from qmp_core.rollout_state import soak_remaining
from qmp_deployer.app import create_app
from qmp_deployer.engine.plan import parse_plan
from qmp_deployer.handlers import ControlHandler, ControlStore
from qmp_deployer.handlers.probes import Probes
from qmp_deployer.handlers.rollout import RolloutOptions, RolloutService
from qmp_ops.cli.deploy import read_history, read_rollouts
from qmp_ops.testing import operator_connection, settings_for

pytestmark = pytest.mark.integration

# ---------------------------------------------------------------- the contract
async def test_deploy_when_requested_then_rollout_in_kv_allocation_in_control_state_and_event_recorded(
        deployer, operator_nc, unique_id, database_url):
    events = await operator_nc.jetstream().subscribe(f"qmp.deploy.{unique_id}.events", ordered_consumer=True)
    reply = await request(operator_nc, unique_id, {"verb": "deploy", "plan": "itest", "env": "paper",
                                                   "command_id": "c1"})
    assert reply["accepted"] is True, reply
    assert reply["rollout"]["status"] == "SOAKING" and reply["rollout"]["phases"][0]["name"] == "paper"
    state, _ = await rollout_of(operator_nc, unique_id)
    assert state is not None and state.outbox_controls == [] and state.epoch >= 1
    entry, _ = await control_entry(operator_nc, unique_id)
    assert entry is not None and entry.allocation == 0.1 and entry.issued_by == "deployer"
    event = json.loads((await events.next_msg(timeout=5)).data)
    assert (event["kind"], event["phase_to"], event["command_id"]) == ("deployed", "paper", "c1")
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT kind, issued_by FROM deployment_events WHERE strategy = $1", unique_id)
    finally:
        await connection.close()
    assert [(r["kind"], r["issued_by"]) for r in rows] == [("deployed", "operator")]


async def test_deploy_when_command_id_repeated_then_applied_once(deployer, operator_nc, unique_id):
    body = {"verb": "deploy", "plan": "itest", "command_id": "same"}
    first = await request(operator_nc, unique_id, body)
    _, revision = await rollout_of(operator_nc, unique_id)
    second = await request(operator_nc, unique_id, body)
    assert (first["accepted"], first["duplicate"]) == (True, False)
    assert (second["accepted"], second["duplicate"]) == (True, True)
    assert (await rollout_of(operator_nc, unique_id))[1] == revision


@pytest.mark.parametrize(("body", "reason"), [
    ({"verb": "launch"}, "verb"),
    ({"verb": "deploy", "plan": "itest", "allocation": 1.5}, "allocation"),
    ({"verb": "deploy", "plan": "itest", "allocation": -0.1}, "allocation"),
    ({"verb": "promote", "expected_phase": "live_10"}, "expected phase"),
    ({"verb": "pause"}, "expected_phase"),
    ({"verb": "deploy", "plan": "itest", "surprise": 1}, "surprise"),
])
async def test_command_when_invalid_then_rejected_with_reason_and_nothing_changes(
        deployer, operator_nc, unique_id, body, reason):
    await request(operator_nc, unique_id, {"verb": "deploy", "plan": "itest", "confirm_live": True,
                                           "command_id": "start"})
    _, revision = await rollout_of(operator_nc, unique_id)
    _, control_revision = await control_entry(operator_nc, unique_id)
    reply = await request(operator_nc, unique_id, body)
    assert reply["accepted"] is False and reason in reply["reason"], reply
    assert (await rollout_of(operator_nc, unique_id))[1] == revision
    assert (await control_entry(operator_nc, unique_id))[1] == control_revision


async def test_command_when_strategy_unknown_or_not_a_token_then_rejected_and_dead_lettered(
        deployer, operator_nc, unique_id):
    js = operator_nc.jetstream()
    dlq = await js.subscribe("qmp.dlq.deployer", ordered_consumer=True, deliver_policy=nats.js.api.DeliverPolicy.NEW)
    unknown = await request(operator_nc, unique_id, {"verb": "promote", "expected_phase": "paper"})
    assert unknown["accepted"] is False and "unknown strategy" in unknown["reason"]
    garbage = await operator_nc.request(f"qmp.deploy.{unique_id}.cmd", b"{nope", timeout=5)
    assert json.loads(garbage.data)["accepted"] is False
    letter = json.loads((await dlq.next_msg(timeout=5)).data)
    assert letter["reason"].startswith("invalid deploy command")
    assert (await rollout_of(operator_nc, unique_id))[0] is None


async def test_deploy_command_when_published_by_execution_then_never_arrives(deployer, nats_credentials,
                                                                            operator_nc, unique_id):
    if not nats_credentials.for_user("execution")[0]:
        pytest.skip("the running NATS server has no per-service users")
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    execution = await nats_credentials.connect("execution", error_cb=on_error)
    await execution.publish(f"qmp.deploy.{unique_id}.cmd", b'{"verb":"deploy","plan":"itest"}')
    await execution.flush()
    await asyncio.sleep(0.2)
    await execution.close()
    assert any("permissions violation" in str(error) for error in errors)
    assert (await rollout_of(operator_nc, unique_id))[0] is None


# ---------------------------------------------------------------- event time soak, rollback, history
async def test_rollout_when_snapshots_advance_event_time_then_promotes_after_soak_and_rolls_back_on_critical(
        deployer, operator_nc, risk_nc, unique_id, nats_credentials, database_url):
    reply = await request(operator_nc, unique_id, {"verb": "deploy", "plan": "itest", "confirm_live": True,
                                                   "command_id": "go"})
    assert reply["accepted"], reply
    ts = T0
    state = await publish_snapshot(risk_nc, operator_nc, unique_id, ts)  # anchors the soak clock
    for _ in range(5):
        ts += STEP
        state = await publish_snapshot(risk_nc, operator_nc, unique_id, ts)
    assert state.phases[state.phase_index].name == "paper"  # 50 minutes of event time: not yet
    ts += STEP
    state = await publish_snapshot(risk_nc, operator_nc, unique_id, ts)
    assert state.phases[state.phase_index].name == "live_10" and state.allocation == 0.2
    assert (await control_entry(operator_nc, unique_id))[0].allocation == 0.2
    ts += STEP
    state = await publish_snapshot(risk_nc, operator_nc, unique_id, ts, drawdown=0.25)
    assert state.status == "ROLLED_BACK" and state.phases[state.phase_index].name == "paper"
    entry, _ = await control_entry(operator_nc, unique_id)
    assert entry.status == "HALTED" and entry.allocation == 0.1 and "drawdown" in entry.reason

    connection = operator_connection(nats_credentials, database_url=database_url)
    history = await read_history(connection, unique_id)
    kinds = [event.kind for event in history]
    assert kinds[0] == "deployed" and "promoted" in kinds and kinds[-1] == "rolled_back"
    rolled = history[-1]
    assert rolled.trigger == "gate drawdown critical" and rolled.issued_by == "deployer"
    assert (rolled.allocation_before, rolled.allocation_after) == (0.2, 0.1)
    assert rolled.metrics["drawdown"] == pytest.approx(0.25) and rolled.thresholds["drawdown"] == [0.10, 0.15]
    assert rolled.ts_event == ts  # event time, not wall time
    status = await read_rollouts(connection, unique_id)
    assert status[unique_id].status == "ROLLED_BACK"


# ---------------------------------------------------------------- lease, crash-resume (in-process services)
async def make_service(nats_credentials, pool, instance: str, clock, ttl: float = 1.0, plan_text: bytes = PLAN,
                       probes: bool = False):
    admin = await connect_as(nats_credentials, "operator")  # only the admin declares streams and buckets
    await bus.declare(admin.jetstream())
    await admin.close()
    nc = await connect_as(nats_credentials, "deployer")
    js = nc.jetstream()
    store = ControlStore(await bus.control_bucket(js))
    await store.load()
    control = ControlHandler(js, store, LiveClock(), pool)
    await control.load_recent()
    plan = parse_plan(plan_text)
    prober = Probes(nc, LiveClock(), "execution", [], "off", 1.0) if probes else None
    options = RolloutOptions(instance_id=instance, lease_ttl_s=ttl, probe_interval_s=1e-9)
    service = RolloutService(js, await js.key_value(subjects.KV_ROLLOUTS), control, clock, LiveClock(),
                             {plan.name: plan}, {}, pool, options, prober)
    await service.start()
    return service, nc


async def lead(service: RolloutService, timeout_s: float = 15.0) -> None:
    await wait_for(service.refresh_lease, f"{service.lease.holder} to hold the lease", timeout_s)


@pytest.fixture
async def pool(database_url):
    pool = await connect_pool(database_url)
    yield pool
    await pool.close()


async def test_lease_when_two_instances_then_one_acts_and_a_takeover_fences_the_old_one(
        nats_credentials, pool, unique_id):
    await wait_lease_free(nats_credentials)
    clock = TestClock(T0)
    first, nc1 = await make_service(nats_credentials, pool, "first-" + unique_id, clock)
    second, nc2 = await make_service(nats_credentials, pool, "second-" + unique_id, clock)
    try:
        await lead(first)
        assert first.lease.held() and not await second.refresh_lease()
        subject = subjects.deploy_commands(unique_id)
        refused = json.loads(await second.handle_command(subject, b'{"verb":"deploy","plan":"itest"}'))
        assert refused["accepted"] is False and "lease" in refused["reason"]
        accepted = json.loads(await first.handle_command(subject,
                                                         b'{"verb":"deploy","plan":"itest","confirm_live":true}'))
        assert accepted["accepted"] is True
        epoch = first.lease.epoch
        await asyncio.sleep(1.05)  # the first stops renewing (a stall): its lease expires
        assert not first.lease.held()
        await lead(second)
        assert second.lease.epoch == epoch + 1
        assert not await first.refresh_lease()  # the old holder sees the new epoch and stays out
        clock.advance(STEP)
        second.monitor.on_snapshot(risk_snapshot(unique_id, clock.now_ns()))
        await lead(second)  # renewed: on a loaded machine the 1 s lease may have lapsed since it was taken
        await second.tick()
        state, _ = await rollout_of(nc2, unique_id)
        assert state.epoch == epoch + 1 and state.last_eval_ns == clock.now_ns()
        first.lease.epoch, first.lease._valid_until = epoch, time.time_ns() + 10**10  # a stale leader's belief
        first.states = {unique_id: state}
        first.revisions = {unique_id: (await rollout_of(nc1, unique_id))[1] - 1}  # from before the takeover
        clock.advance(STEP)
        first.monitor.on_snapshot(risk_snapshot(unique_id, clock.now_ns()))
        await first.tick()  # its compare-and-set fails: it reloads, sees the newer epoch and steps down
        assert first.lease.epoch == 0
        assert (await rollout_of(nc1, unique_id))[0].epoch == epoch + 1
    finally:
        await second.stop()
        await nc1.close()
        await nc2.close()


async def count_control_audit(pool, strategy: str, nc=None) -> int:
    """Count the strategy's control audit rows; with `nc`, once the table has caught up with the audit stream.

    The stream is written before each reply, the table just after it, so the two agree within moments.
    """
    rows = await pool.fetchval("SELECT count(*) FROM control_audit WHERE strategy = $1", strategy)
    if nc is None:
        return rows
    subject = subjects.audit_control(strategy)
    for _ in range(100):
        info = await nc.jetstream().stream_info(subjects.STREAM_AUDIT, subjects_filter=subject)
        if rows == (info.state.subjects or {}).get(subject, 0):
            return rows
        await asyncio.sleep(0.05)
        rows = await pool.fetchval("SELECT count(*) FROM control_audit WHERE strategy = $1", strategy)
    raise AssertionError(f"control_audit has {rows} rows, the audit stream differs")


async def test_crash_when_killed_mid_soak_then_resumes_same_phase_same_remaining_soak_no_repeated_actions(
        nats_credentials, pool, unique_id):
    await wait_lease_free(nats_credentials)
    clock = TestClock(T0)
    first, nc1 = await make_service(nats_credentials, pool, "a-" + unique_id, clock)
    await lead(first)
    subject = subjects.deploy_commands(unique_id)
    reply = json.loads(await first.handle_command(
        subject, b'{"verb":"deploy","plan":"itest","confirm_live":true,"command_id":"d"}'))
    assert reply["accepted"]

    async def evaluate(service: RolloutService, drawdown: float = 0.01) -> None:
        clock.advance(60 * NS_PER_SECOND)
        service.monitor.on_snapshot(risk_snapshot(unique_id, clock.now_ns(), drawdown))
        await service.tick()

    for _ in range(20):
        await evaluate(first)
    await evaluate(first, drawdown=0.12)  # warning: allocation halved, once
    for _ in range(10):
        await evaluate(first)
    before, _ = await rollout_of(nc1, unique_id)
    assert before.status == "SOAKING" and before.allocation == pytest.approx(0.05)
    audit = await count_control_audit(pool, unique_id, nc1)
    _, control_revision = await control_entry(nc1, unique_id)
    await nc1.close()  # killed: no lease release, no goodbye

    clock.advance(3 * 3600 * NS_PER_SECOND)  # three hours down
    second, nc2 = await make_service(nats_credentials, pool, "b-" + unique_id, clock)
    try:
        await lead(second)
        loaded = second.states[unique_id]
        assert loaded.phases[loaded.phase_index].name == "paper"
        assert soak_remaining(loaded) == soak_remaining(before)
        await evaluate(second)
        after = second.states[unique_id]
        assert soak_remaining(after) == soak_remaining(before)  # the downtime did not count
        assert await count_control_audit(pool, unique_id, nc2) == audit
        assert (await control_entry(nc2, unique_id))[1] == control_revision
        remaining_minutes = round(soak_remaining(after)[0] / 60)
        for _ in range(remaining_minutes - 1):
            await evaluate(second)
        assert second.states[unique_id].phases[second.states[unique_id].phase_index].name == "paper"
        await evaluate(second)
        state = second.states[unique_id]
        assert state.phases[state.phase_index].name == "live_10"  # not one evaluation early
        assert (await control_entry(nc2, unique_id))[0].allocation == 0.2
    finally:
        await second.stop()
        await nc2.close()


async def test_crash_when_between_decision_and_effects_then_next_leader_finishes_them_exactly_once(
        nats_credentials, pool, unique_id):
    await wait_lease_free(nats_credentials)
    clock = TestClock(T0)
    first, nc1 = await make_service(nats_credentials, pool, "a-" + unique_id, clock)
    await lead(first)
    real_write = first.store.write
    writes = 0

    async def dies_on_outbox_clear(state, revision):
        nonlocal writes
        writes += 1
        if writes == 2:  # the decision is written and carried out; the process dies before clearing the outbox
            raise ConnectionError("killed")
        return await real_write(state, revision)

    first.store.write = dies_on_outbox_clear  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await first.handle_command(subjects.deploy_commands(unique_id),
                                   b'{"verb":"deploy","plan":"itest","command_id":"d"}')
    stored, _ = await rollout_of(nc1, unique_id)
    assert stored.outbox_controls and stored.outbox_events  # the decision, with its pending effects
    audit = await count_control_audit(pool, unique_id, nc1)
    _, control_revision = await control_entry(nc1, unique_id)
    js = nc1.jetstream()
    info = await js.stream_info(subjects.STREAM_DEPLOY, subjects_filter=subjects.deploy_events(unique_id))
    published = info.state.subjects[subjects.deploy_events(unique_id)]
    await nc1.close()

    second, nc2 = await make_service(nats_credentials, pool, "b-" + unique_id, clock)
    try:
        await lead(second)  # taking over carries out the outbox again: every effect lands once
        stored, _ = await rollout_of(nc2, unique_id)
        assert stored.outbox_controls == [] and stored.outbox_events == []
        assert await count_control_audit(pool, unique_id, nc2) == audit
        assert (await control_entry(nc2, unique_id))[1] == control_revision
        info = await nc2.jetstream().stream_info(subjects.STREAM_DEPLOY,
                                                 subjects_filter=subjects.deploy_events(unique_id))
        assert info.state.subjects[subjects.deploy_events(unique_id)] == published
        rows = await pool.fetchval("SELECT count(*) FROM deployment_events WHERE strategy = $1", unique_id)
        assert rows == 1
    finally:
        await second.stop()
        await nc2.close()


# ---------------------------------------------------------------- the process, SIGKILLed mid-soak
def start_deployer(nats_credentials, database_url: str, run_dir: Path, plan: Path, instance: str) -> subprocess.Popen:
    user, password = nats_credentials.for_user("deployer")
    env = {key: value for key, value in os.environ.items() if not key.startswith("QMP_")}
    env.update(QMP_NATS_URL=nats_credentials.url, QMP_NATS_USER=user, QMP_NATS_PASSWORD=password,
               QMP_NATS_TLS_CA=nats_credentials.tls_ca,
               QMP_DATABASE_URL=database_url, QMP_RUN_DIR=str(run_dir), QMP_CLOCK="replay",
               QMP_PLAN_FILE=str(plan), QMP_INSTANCE_ID=instance, QMP_MEMORY_PROBE="off", QMP_LEASE_TTL_S="5",
               PYTHONUNBUFFERED="1")
    with (run_dir / "deployer.log").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "qmp_deployer"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)


async def wait_leader(nc: nats.NATS, process: subprocess.Popen, run_dir: Path) -> None:
    async def leading() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"deployer exited:\n{(run_dir / 'deployer.log').read_text()[-3000:]}")
        try:
            reply = await nc.request(subjects.health("deployer"), b"", timeout=0.5)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            return False
        return bool(json.loads(reply.data)["detail"].get("rollouts", {}).get("leader"))

    await wait_for(leading, "the deployer process to lead", timeout_s=30.0)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def phase(state: RolloutState) -> str:
    return state.phases[state.phase_index].name


async def test_deployer_when_sigkilled_mid_soak_then_restart_resumes_same_phase_same_soak_no_repeated_actions(
        nats_credentials, database_url, operator_nc, risk_nc, pool, unique_id, tmp_path):
    await wait_lease_free(nats_credentials)
    plan = tmp_path / "itest.toml"
    plan.write_bytes(PLAN)
    instance = "kill-" + unique_id
    process = start_deployer(nats_credentials, database_url, tmp_path, plan, instance)
    try:
        await wait_leader(operator_nc, process, tmp_path)
        reply = await request(operator_nc, unique_id, {"verb": "deploy", "plan": "itest", "confirm_live": True,
                                                            "command_id": "k1"})
        assert reply["accepted"], reply
        ts = T0
        await publish_snapshot(risk_nc, operator_nc, unique_id, ts)
        ts += STEP
        await publish_snapshot(risk_nc, operator_nc, unique_id, ts)
        ts += STEP
        held = await publish_snapshot(risk_nc, operator_nc, unique_id, ts, drawdown=0.12)  # action: halve
        assert held.status == "HOLDING" and held.allocation == pytest.approx(0.05)
        ts += STEP
        before = await publish_snapshot(risk_nc, operator_nc, unique_id, ts)
        assert before.status == "SOAKING" and phase(before) == "paper"
        audit = await count_control_audit(pool, unique_id, operator_nc)
        _, control_revision = await control_entry(operator_nc, unique_id)

        process.send_signal(signal.SIGKILL)
        process.wait(10)
        killed_at = time.monotonic()
        process = start_deployer(nats_credentials, database_url, tmp_path, plan, instance)
        await wait_leader(operator_nc, process, tmp_path)
        assert time.monotonic() - killed_at < 5.0  # its own lease id: no wait for the TTL

        ts += STEP  # the deployer was down for this step: it is not soak time
        after = await publish_snapshot(risk_nc, operator_nc, unique_id, ts)
        assert phase(after) == "paper" and after.status == "SOAKING"
        assert soak_remaining(after) == soak_remaining(before)
        assert after.epoch > before.epoch
        assert await count_control_audit(pool, unique_id, operator_nc) == audit  # the halving was not re-run
        assert (await control_entry(operator_nc, unique_id))[1] == control_revision
        steps_left = round(soak_remaining(after)[0] * 1e9 / STEP)
        for _ in range(steps_left - 1):
            ts += STEP
            state = await publish_snapshot(risk_nc, operator_nc, unique_id, ts)
            assert phase(state) == "paper"  # never early
        ts += STEP
        state = await publish_snapshot(risk_nc, operator_nc, unique_id, ts)
        assert phase(state) == "live_10"
        stored, _ = await rollout_of(operator_nc, unique_id)
        assert [e.kind for e in stored.recent_events].count("promoted") == 1
    finally:
        stop(process)
        await asyncio.sleep(0)


async def test_replay_when_another_strategy_moves_event_time_first_then_this_one_is_not_found_stale(
        nats_credentials, pool, unique_id):
    await wait_lease_free(nats_credentials)
    service, nc = await make_service(nats_credentials, pool, "r-" + unique_id, ReplayClock(), ttl=3.0)
    a, b = unique_id + "a", unique_id + "b"
    day = 86_400 * NS_PER_SECOND
    try:
        await lead(service)
        for strategy in (a, b):
            reply = json.loads(await service.handle_command(
                subjects.deploy_commands(strategy), b'{"verb":"deploy","plan":"itest","confirm_live":true}'))
            assert reply["accepted"], reply
            await service.on_snapshot(snapshot(strategy, T0))
        await service.on_snapshot(snapshot(a, T0 + day))  # a's next bar arrives before b's
        assert service.states[b].last_eval_ns == T0
        await service.tick()  # the timer: b's data is only milliseconds (wall) behind, so not judged yet
        assert service.states[b].last_eval_ns == T0
        await service.on_snapshot(snapshot(b, T0 + day))
        state = service.states[b]
        assert state.last_eval_ns == T0 + day and state.status == "SOAKING" and not state.defensive
    finally:
        await service.stop()
        await nc.close()


def test_cli_when_operator_deploys_pauses_and_reads_status_and_history_then_each_verb_answers(
        nats_credentials, database_url, tmp_path, monkeypatch, unique_id):
    from typer.testing import CliRunner

    from qmp_ops.cli.main import app

    asyncio.run(wait_lease_free(nats_credentials))
    plan = tmp_path / "itest.toml"
    plan.write_bytes(PLAN)
    operator_connection(nats_credentials, database_url=database_url, run_dir=str(tmp_path)).write(
        tmp_path / ".qmp" / "connection.json")
    monkeypatch.chdir(tmp_path)
    process = start_deployer(nats_credentials, database_url, tmp_path, plan, "cli-" + unique_id)
    runner = CliRunner()
    try:
        async def leader() -> None:
            nc = await connect_as(nats_credentials, "operator")
            try:
                await wait_leader(nc, process, tmp_path)
            finally:
                await nc.close()

        asyncio.run(leader())
        refused = runner.invoke(app, ["deploy", unique_id, "--env", "paper", "--plan", "itest"])
        assert refused.exit_code == 1 and "no verification" in refused.output
        deployed = runner.invoke(app, ["deploy", unique_id, "--env", "paper", "--plan", "itest",
                                       "--skip-verification"])
        assert deployed.exit_code == 0, deployed.output
        assert '"accepted": true' in deployed.output and "paper" in deployed.output
        promoted = runner.invoke(app, ["rollout", "promote", unique_id, "--skip-verification"])
        assert promoted.exit_code == 1 and "expecting phase paper" in promoted.output
        assert "soak of 'paper' incomplete" in promoted.output
        paused = runner.invoke(app, ["rollout", "pause", unique_id, "--reason", "lunch"])
        assert paused.exit_code == 0, paused.output
        status = runner.invoke(app, ["rollout", "status", unique_id])
        assert status.exit_code == 0 and "PAUSED" in status.output and "1/3" in status.output
        history = runner.invoke(app, ["history", unique_id, "--json"])
        events = json.loads(history.output)
        assert [e["kind"] for e in events] == ["deployed", "paused"]
        assert "unverified" in events[0]["reason"]
        assert events[1]["reason"] == "lunch" and events[1]["issued_by"] == "operator"
    finally:
        stop(process)


async def test_api_latency_when_broker_p99_breaches_then_backup_endpoint_pinned_and_released_when_clean(
        nats_credentials, pool, operator_nc, unique_id):
    await wait_lease_free(nats_credentials)
    received: list[BrokerCommand] = []
    p99 = {"value": 700.0}

    async def fake_broker(msg) -> None:  # a REST broker's command endpoint, as execution answers it
        command = codec(BrokerCommand).decode(msg.data)
        received.append(command)
        await msg.respond(encode(BrokerReply(accepted=True, active="primary",
                                             endpoints={"primary": {"latency_p99_ms": p99["value"]}})))

    subscription = await operator_nc.subscribe(subjects.broker(), cb=fake_broker)
    plan_text = PLAN + b"""
[metrics.api_latency]
source = "latency_ms"
warning = 500.0
critical = 1000.0
action = "switch_endpoint"
failure_limit = 3
"""
    clock = TestClock(T0)
    service, nc = await make_service(nats_credentials, pool, "l-" + unique_id, clock, ttl=3.0, plan_text=plan_text,
                                     probes=True)
    try:
        await lead(service)
        await service.handle_command(subjects.deploy_commands(unique_id), b'{"verb":"deploy","plan":"itest"}')
        for value in (700.0, 80.0):
            p99["value"] = value
            clock.advance(60 * NS_PER_SECOND)
            service.monitor.on_snapshot(risk_snapshot(unique_id, clock.now_ns()))
            await service.tick()
        gate = next(g for g in service.states[unique_id].gates if g.metric == "api_latency")
        assert gate.value == pytest.approx(80.0) and "broker primary endpoint p99" in gate.detail
        switches = [c.endpoint for c in received if c.command == "use_endpoint"]
        assert switches == ["backup", "auto"]
        assert all(c.issued_by == "deployer" for c in received)
    finally:
        await subscription.unsubscribe()
        await service.stop()
        await nc.close()


async def test_fills_when_a_replay_sends_them_per_batch_then_each_counts_once_as_one_by_one(
        nats_credentials, pool, unique_id):
    await wait_lease_free(nats_credentials)
    service, nc = await make_service(nats_credentials, pool, "fills-" + unique_id, TestClock(T0))
    try:
        await lead(service)
        reply = json.loads(await service.handle_command(
            subjects.deploy_commands(unique_id), b'{"verb":"deploy","plan":"itest","confirm_live":true}'))
        assert reply["accepted"]
        fills = [Fill(strategy=unique_id, order_id=f"o{n}", fill_id=f"f{n}", symbol="A", side="BUY", quantity=1.0,
                      price=10.0, arrival_price=10.0, slippage_bps=float(n), fee=0.0, ts_event=T0) for n in range(3)]
        await service.on_batch_events(encode(BatchEvents(strategy=unique_id, ts_event=T0, fills=fills[:2])))
        await service.on_fill(encode(fills[1]))  # the same fill once more, one by one: already counted
        await service.on_fill(encode(fills[2]))
        await service.on_batch_events(b"{not events")  # ignored, logged
    finally:
        await service.stop()
        await nc.close()

    assert service.states[unique_id].status == "SOAKING" and service.states[unique_id].fills == 3


async def test_deployer_when_a_rollout_entry_is_unreadable_then_starts_and_a_deploy_replaces_it(
        nats_credentials, database_url, plan_file, tmp_path, operator_nc, unique_id):
    # Found by running execution's tests before the deployer's on one server: execution's own test of a bad
    # entry left one in the bucket, and every deployer started after it failed at start.
    writer = await connect_as(nats_credentials, "deployer")  # the only identity that writes the bucket
    kv = await writer.jetstream().key_value(subjects.KV_ROLLOUTS)
    await kv.put(subjects.rollout_key(unique_id), b'{"strategy": "x", "phase_index": "two"}')
    await writer.close()
    await wait_lease_free(nats_credentials)
    settings = settings_for(nats_credentials, "deployer", database_url, run_dir=str(tmp_path / "run"))
    app = create_app(settings, plan_file=str(plan_file), instance_id="it-bad-entry", memory_probe="off",
                     lease_ttl_s=3.0)
    async with app:
        status = await request(operator_nc, unique_id, {"verb": "status"})
        deployed = await request(operator_nc, unique_id, {"verb": "deploy", "plan": "itest", "command_id": "fresh"})
        state, _ = await rollout_of(operator_nc, unique_id)

    assert not status["accepted"] and "no rollout" in status["reason"]
    assert deployed["accepted"], deployed
    assert state is not None and state.strategy == unique_id and state.phase_index == 0

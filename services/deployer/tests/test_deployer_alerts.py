"""Alerts to people: which events become alerts, how often, and their delivery through apprise to a webhook on
loopback, from a real deployer on a real nats-server."""

import asyncio
import json
import os
import subprocess
import sys

import msgspec
import pytest
from aiohttp import web

from qmp_core import bus, subjects
from qmp_core.messages import Alert as AlertMessage
from qmp_core.messages import BreakerReleased, BreakerTripped, DeploymentEvent, TradingState, codec
from qmp_deployer.app import create_app
from qmp_deployer.engine.alerts import AlertRules
from qmp_ops.runtime.ports import free_port
from qmp_ops.testing import settings_for


def tripped(strategy: str = "mom", breaker: str = "drawdown_24h", action: str = "halt") -> BreakerTripped:
    return BreakerTripped(strategy=strategy, breaker=breaker, value=0.12, threshold=0.1, action=action, ts_event=7)


def test_rules_when_breaker_trips_then_alert_by_action_and_a_release_is_not_one() -> None:
    rules = AlertRules()
    halt = rules.on_breaker(tripped(), 0.0)
    cut = rules.on_breaker(tripped(breaker="vol_ratio", action="reduce_size"), 0.0)
    assert halt is not None and halt.level == "critical" and "drawdown_24h tripped" in halt.title
    assert "0.12" in halt.body and "0.1" in halt.body
    assert cut is not None and cut.level == "warning"
    released = BreakerReleased(strategy="mom", breaker="vol_ratio", value=1.0, threshold=1.5, action="restore",
                               ts_event=9)
    assert rules.on_breaker(released, 1.0) is None


def test_rules_when_breaker_flaps_then_one_alert_per_quiet_window_saying_how_many_were_held_back() -> None:
    rules = AlertRules(quiet_s=300.0)
    sent = [rules.on_breaker(tripped(), t) for t in (0.0, 10.0, 20.0, 299.0, 300.0)]
    assert [a is not None for a in sent] == [True, False, False, False, True]
    assert "3 more like it held back" in sent[-1].body and rules.suppressed == 3  # type: ignore[union-attr]
    assert rules.on_breaker(tripped(strategy="other"), 21.0) is not None  # another strategy: its own window


def test_rules_when_state_halts_and_resumes_then_one_alert_each_and_none_while_it_stays() -> None:
    rules = AlertRules(quiet_s=0.0)
    states = [TradingState(strategy="mom", status=s, issued_by=who, reason="dd")
              for s, who in (("ACTIVE", "deployer"), ("HALTED", "risk"), ("HALTED", "operator"),
                             ("ACTIVE", "operator"))]
    alerts = [rules.on_state(state, float(i)) for i, state in enumerate(states)]
    assert [a.level if a else None for a in alerts] == [None, "critical", None, "info"]
    assert "HALTED by risk" in alerts[1].title and "dd" in alerts[1].body  # type: ignore[union-attr]


def test_rules_when_rollout_rolls_back_then_critical_and_a_promotion_is_quiet() -> None:
    rules = AlertRules()
    event = DeploymentEvent(strategy="mom", rollout_id="r1", seq=3, kind="rolled_back", phase_from="live_50",
                            phase_to="paper", allocation_before=0.5, allocation_after=0.0,
                            reason="drawdown 12% > critical 10%")
    alert = rules.on_deployment(event, 0.0)
    assert alert is not None and alert.level == "critical" and "rolled back" in alert.title
    assert "drawdown 12%" in alert.body and "live_50 → paper" in alert.body
    assert rules.on_deployment(DeploymentEvent(strategy="mom", rollout_id="r1", seq=4, kind="promoted"), 1.0) is None


def gate_event(kind: str, level: str, value: float, seq: int) -> DeploymentEvent:
    return DeploymentEvent(strategy="mom", rollout_id="r1", seq=seq, kind=kind, phase_to="live_50",
                           trigger=f"gate drawdown {level}", metrics={"drawdown": value},
                           thresholds={"drawdown": [0.04, 0.06]}, reason=f"drawdown ... → {level}")


def test_rules_when_a_gate_crosses_warning_then_critical_then_clears_then_one_alert_each_at_its_level() -> None:
    rules = AlertRules(quiet_s=300.0)
    sent = [rules.on_deployment(gate_event("alert", "warning", 0.045, 1), 0.0),
            rules.on_deployment(gate_event("alert", "critical", 0.07, 2), 1.0),
            rules.on_deployment(gate_event("gate_cleared", "ok", 0.01, 3), 2.0),
            rules.on_deployment(gate_event("alert", "warning", 0.05, 4), 3.0)]  # the same warning again, too soon
    assert [a.level if a else None for a in sent] == ["warning", "critical", "info", None]
    assert sent[1] is not None and sent[1].title == "QMP mom: drawdown critical"
    assert "drawdown = 0.07 (warning 0.04, critical 0.06) in phase live_50" in sent[1].body
    assert sent[2] is not None and sent[2].title == "QMP mom: drawdown cleared" and sent[2].strategy == "mom"


def test_rules_when_a_verification_fails_then_critical() -> None:
    event = DeploymentEvent(strategy="mom", rollout_id="verify", seq=0, kind="alert", issued_by="verify",
                            reason="verification failed: crisis 2008 drawdown 31% > 25%")
    alert = AlertRules().on_deployment(event, 0.0)
    assert alert is not None and alert.level == "critical" and alert.title == "QMP mom: alert from verify"
    assert "crisis 2008" in alert.body


@pytest.mark.integration
async def test_deployer_when_a_gate_goes_critical_then_the_webhook_the_bus_and_qmp_alerts_have_it(
        nats_credentials, database_url, operator_nc, unique_id) -> None:
    received: asyncio.Queue[dict] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response(text="ok")

    server = web.Application()
    server.router.add_post("/alerts", hook)
    runner = web.AppRunner(server)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    settings = settings_for(nats_credentials, "deployer", database_url, run_dir="/tmp/qmp-test-run")
    on_bus = await operator_nc.subscribe(subjects.alert(unique_id))
    event = msgspec.structs.replace(gate_event("alert", "critical", 0.07, 1), strategy=unique_id)
    try:
        async with create_app(settings, alert_urls=[f"json://127.0.0.1:{port}/alerts"], alert_quiet_s=60.0):
            await bus.publish(operator_nc.jetstream(), subjects.deploy_events(unique_id), event)
            hooked = await asyncio.wait_for(received.get(), 10)
            published = codec(AlertMessage).decode((await on_bus.next_msg(timeout=10)).data)
    finally:
        await on_bus.unsubscribe()
        await runner.cleanup()
    # `qmp alerts` as an operator runs it, in a process of its own: it reads them back from the audit stream
    user, password = nats_credentials.for_user("operator")
    flags = ["--nats-url", nats_credentials.url] + (["--nats-user", user, "--nats-password", password] if user else [])
    flags += ["--nats-tls-ca", nats_credentials.tls_ca] if nats_credentials.tls_ca else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("QMP_")}
    shown = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "qmp_ops.cli.main", *flags, "alerts",
                                                     "--strategy", unique_id, "--json"],
                                    capture_output=True, text=True, timeout=120, env=env)

    assert hooked["title"] == f"QMP {unique_id}: drawdown critical" and hooked["type"] == "failure"
    assert (published.strategy, published.level, published.title) == (unique_id, "critical", hooked["title"])
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line)["title"] for line in shown.stdout.splitlines()] == [hooked["title"]]


@pytest.mark.integration
async def test_deployer_when_breaker_trips_and_operator_halts_then_both_alerts_reach_the_webhook(
        nats_credentials, database_url, operator_nc, unique_id) -> None:
    received: asyncio.Queue[dict] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response(text="ok")

    server = web.Application()
    server.router.add_post("/alerts", hook)
    runner = web.AppRunner(server)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    settings = settings_for(nats_credentials, "deployer", database_url, run_dir="/tmp/qmp-test-run")
    risk_nc = await nats_credentials.connect("risk")
    try:
        async with create_app(settings, alert_urls=[f"json://127.0.0.1:{port}/alerts"], alert_quiet_s=60.0):
            await bus.publish(risk_nc.jetstream(), subjects.breaker_events(unique_id), tripped(strategy=unique_id))
            breaker = await asyncio.wait_for(received.get(), 10)
            reply = await operator_nc.request(subjects.control(unique_id, "operator"),
                                              json.dumps({"command": "halt", "reason": "look"}).encode(), timeout=5)
            assert json.loads(reply.data)["accepted"] is True
            halted = await asyncio.wait_for(received.get(), 10)
    finally:
        await risk_nc.close()
        await runner.cleanup()

    assert breaker["title"] == f"QMP {unique_id}: breaker drawdown_24h tripped, action halt"
    assert breaker["type"] == "failure"
    assert halted["title"] == f"QMP {unique_id}: HALTED by operator" and "look" in halted["message"]


async def test_alerter_when_channel_down_then_counted_as_failed_and_nothing_raised() -> None:
    from qmp_deployer.engine.alerts import Alert
    from qmp_deployer.handlers.alerts import Alerter

    alerter = Alerter([f"json://127.0.0.1:{free_port()}/alerts"])  # nothing listens there

    delivered = await alerter.send(Alert(key="k", title="QMP mom: HALTED by risk", body="dd", level="critical"))

    assert delivered is False
    assert alerter.detail() == {"sent": 0, "failed": 1, "held_back": 0, "channels": 1, "published": 0}
    with pytest.raises(ValueError, match="apprise does not understand"):
        Alerter(["nosuchscheme://x"])

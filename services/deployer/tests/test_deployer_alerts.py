"""Alerts to people: which events become alerts, how often, and their delivery through apprise to a webhook on
loopback, from a real deployer on a real nats-server."""

import asyncio
import json

import pytest
from aiohttp import web

from qmp_core import bus, subjects
from qmp_core.messages import BreakerReleased, BreakerTripped, DeploymentEvent, TradingState
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
    assert halt is not None and halt.level == "failure" and "drawdown_24h tripped" in halt.title
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
    assert [a.level if a else None for a in alerts] == [None, "failure", None, "info"]
    assert "HALTED by risk" in alerts[1].title and "dd" in alerts[1].body  # type: ignore[union-attr]


def test_rules_when_rollout_rolls_back_then_failure_and_a_promotion_is_quiet() -> None:
    rules = AlertRules()
    event = DeploymentEvent(strategy="mom", rollout_id="r1", seq=3, kind="rolled_back", phase_from="live_50",
                            phase_to="paper", allocation_before=0.5, allocation_after=0.0,
                            reason="drawdown 12% > critical 10%")
    alert = rules.on_deployment(event, 0.0)
    assert alert is not None and alert.level == "failure" and "rolled back" in alert.title
    assert "drawdown 12%" in alert.body and "live_50 → paper" in alert.body
    assert rules.on_deployment(DeploymentEvent(strategy="mom", rollout_id="r1", seq=4, kind="promoted"), 1.0) is None


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

    delivered = await alerter.send(Alert(key="k", title="QMP mom: HALTED by risk", body="dd", level="failure"))

    assert delivered is False and alerter.detail() == {"sent": 0, "failed": 1, "held_back": 0, "channels": 1}
    with pytest.raises(ValueError, match="apprise does not understand"):
        Alerter(["nosuchscheme://x"])

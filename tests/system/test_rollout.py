"""The whole stack replays 2007-2009: the rollout walks paper → 100% in 2007 and rolls back in autumn 2008.

An equal-weight portfolio of the bundled S&P 500 stocks; the deployer's drawdown gate watches the daily
loss of the allocated capital (warning 4%, critical 6%). Risk's volatility breaker is switched off so the
deployer's gates, not the size breaker, meet the crash.
"""

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qmp_core import subjects
from qmp_ops.runtime.supervisor import Stack, StackOptions

pytestmark = pytest.mark.system

SUPPORT = Path(__file__).resolve().parents[1] / "support"
PLAN = b"""
name = "crisis"
gate_interval_s = 60.0
[[phases]]
name = "paper"
env = "paper"
allocation = 0.1
min_soak_h = 480.0
min_fills = 5
[[phases]]
name = "live_10"
env = "live"
allocation = 0.1
min_soak_h = 720.0
[[phases]]
name = "live_50"
env = "live"
allocation = 0.5
min_soak_h = 720.0
[[phases]]
name = "live_100"
env = "live"
allocation = 1.0
min_soak_h = 720.0
approval = true
[metrics.drawdown]
source = "drawdown_24h"
warning = 0.04
critical = 0.06
action = "reduce_allocation"
per_allocation = true
stale_after_s = 432000.0
fail_closed = true
[metrics.var_95]
source = "var:historical_95"
warning = 0.05
critical = 0.08
action = "halt_new_positions"
failure_limit = 2
per_allocation = true
stale_after_s = 432000.0
fail_closed = true
"""

def year_month(ts_ns: int) -> tuple[int, int]:
    moment = datetime.fromtimestamp(ts_ns / 1e9, tz=UTC)
    return moment.year, moment.month


@pytest.fixture
def stack(tmp_path: Path):
    strategy = "ro" + uuid.uuid4().hex[:8]
    plan = tmp_path / "crisis.toml"
    plan.write_bytes(PLAN)
    options = StackOptions(
        home=tmp_path / ".qmp",
        clock="replay",
        service_env={
            "collector": {"QMP_SOURCE": "history", "QMP_VENUE": strategy + "v", "QMP_START": "2007-01-01",
                          "QMP_END": "2009-12-31", "QMP_REPLAY_RATE": "0", "QMP_LOCKSTEP_STRATEGY": strategy},
            "execution": {"QMP_STRATEGIES": f"{strategy}=qmp_rollout_strategies:EqualWeight",
                          "PYTHONPATH": str(SUPPORT)},
            "risk": {"QMP_VOL_RATIO_LIMIT": "1000", "QMP_VOL_RATIO_RELEASE": "999"},
            "deployer": {"QMP_PLAN_FILE": str(plan), "QMP_MEMORY_PROBE": "off"},
        },
    )
    stack = Stack(options)
    stack.strategy = strategy  # type: ignore[attr-defined]
    stack.start_servers()
    try:
        yield stack
    finally:
        stack.stop()


async def test_replay_when_2007_to_2009_then_promoted_to_full_in_2007_and_rolled_back_in_autumn_2008(stack):
    strategy = stack.strategy
    nc = await stack.connection.connect()
    events: list[dict] = []

    async def on_event(msg) -> None:
        events.append(json.loads(msg.data))

    await nc.subscribe(subjects.deploy_events(strategy), cb=on_event, pending_msgs_limit=-1)
    for service in ("deployer", "risk", "execution"):
        stack.start_service(service)
        await stack.wait_healthy(service)

    async def command(body: dict) -> dict:
        reply = await nc.request(subjects.deploy_commands(strategy), json.dumps(body).encode(), timeout=10)
        return json.loads(reply.data)

    deployed = await command({"verb": "deploy", "plan": "crisis", "env": "paper", "confirm_live": True,
                              "command_id": "sys-deploy"})
    assert deployed["accepted"], deployed
    approved = await command({"verb": "promote", "full": True, "expected_phase": "paper", "command_id": "sys-ok"})
    assert approved["accepted"], approved
    stack.start_service("collector")
    await stack.wait_healthy("collector")

    deadline = time.monotonic() + 420
    while not any(e["kind"] == "rolled_back" for e in events):
        assert time.monotonic() < deadline, f"no rollback; last events: {events[-5:]}"
        assert stack.dead_services() == [], stack.log_tail(stack.dead_services()[0])
        await asyncio.sleep(0.25)

    promoted = [e for e in events if e["kind"] == "promoted"]
    assert [(e["phase_from"], e["phase_to"]) for e in promoted] == [
        ("paper", "live_10"), ("live_10", "live_50"), ("live_50", "live_100")]
    assert all(year_month(e["ts_event"])[0] == 2007 for e in promoted)
    rolled = next(e for e in events if e["kind"] == "rolled_back")
    assert (2008, 9) <= year_month(rolled["ts_event"]) <= (2008, 11), rolled
    assert rolled["trigger"].startswith("gate ") and rolled["trigger"].endswith(" critical")
    assert rolled["phase_from"] == "live_100" and rolled["phase_to"] == "live_50"
    assert rolled["allocation_after"] <= 0.5

    kv = await nc.jetstream().key_value(subjects.KV_CONTROL)
    entry = json.loads((await kv.get(subjects.control_key(strategy, "deployer"))).value)
    assert entry["status"] == "HALTED" and entry["reason"].startswith("rollout rollback")
    await nc.close()

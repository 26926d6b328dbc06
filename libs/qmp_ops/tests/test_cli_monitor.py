"""`qmp monitor`: the running stack sampled into CSV rows with their levels (real NATS, each message written
by the role that writes it in a stack)."""

import csv
from pathlib import Path

import pytest
from nats.aio.client import Client
from typer.testing import CliRunner

from qmp_core import bus, subjects
from qmp_core.messages import (
    GateResult,
    PortfolioSnapshot,
    RiskSnapshot,
    RolloutPhase,
    RolloutState,
    TradingState,
    encode,
)
from qmp_ops.cli.main import app as qmp
from qmp_ops.cli.monitor import COLUMNS, parse_groups, run, seconds
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import connect_as, operator_connection

DAY = 86_400 * 10**9


def test_seconds_and_groups_when_written_as_an_operator_would_then_read_and_when_wrong_then_said_why() -> None:
    assert [seconds(t) for t in ("5", "5s", "250ms", "10m", "1h", "0")] == [5.0, 5.0, 0.25, 600.0, 3600.0, 0.0]
    assert parse_groups("latency, risk") == ["risk", "latency"]
    with pytest.raises(ValueError, match="not a duration"):
        seconds("five")
    with pytest.raises(ValueError, match="choose from risk, performance, latency, gates"):
        parse_groups("risk,speed")


def test_monitor_when_a_group_is_unknown_then_exit_2_naming_the_groups() -> None:
    result = CliRunner().invoke(qmp, ["monitor", "--metrics", "risk,speed"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "choose from risk, performance, latency, gates" in result.output


@pytest.mark.integration
async def test_monitor_when_the_stack_has_a_strategy_then_every_group_writes_rows_with_levels(
        nats_credentials: NatsCredentials, operator_nc: Client, unique_id: str, tmp_path: Path) -> None:
    sid = unique_id
    risk, execution, deployer = [await connect_as(nats_credentials, user) for user in ("risk", "execution",
                                                                                      "deployer")]
    try:
        await bus.publish(risk.jetstream(), subjects.snapshot(sid), RiskSnapshot(
            strategy=sid, ts_event=DAY, equity=1_050.0, var={"historical_99": 0.031}, es={"historical_99": 0.04},
            drawdown_24h=0.02, drawdown_max=0.05, volatility_ratio=1.4, breakers=["drawdown_24h"]),
            msg_id=f"{sid}:r")
        await bus.publish(execution.jetstream(), subjects.portfolio(sid), PortfolioSnapshot(
            strategy=sid, ts_event=DAY, cash=50.0, equity=1_050.0, symbols=["A", "B"], quantities=[10.0, 0.0],
            prices=[100.0, 20.0], orders_total=7, fills_total=5, fees=1.5), msg_id=f"{sid}:p")
        js = deployer.jetstream()
        await (await bus.control_bucket(js)).put(subjects.control_key(sid, "operator"), encode(TradingState(
            strategy=sid, status="HALTED", reason="test", allocation=0.5, issued_by="operator")))
        phase = RolloutPhase(name="paper", env="paper", allocation=0.1, min_soak_s=0.0)
        await (await js.key_value(subjects.KV_ROLLOUTS)).put(subjects.rollout_key(sid), encode(RolloutState(
            strategy=sid, rollout_id="r-1", plan="default", phases=[phase], gates=[
                GateResult(metric="drawdown", level="warning", value=0.12, warning=0.10, critical=0.15)])))
        output = tmp_path / "metrics.csv"

        written = await run(operator_connection(nats_credentials), ["risk", "performance", "latency", "gates"],
                            [sid], interval_s=0.05, duration_s=0.12, output=output)
    finally:
        for nc in (risk, execution, deployer):
            await nc.drain()

    with output.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS and len(rows) == written
    mine = {(r["group"], r["metric"]): r for r in rows if r["strategy"] == sid}
    assert {r["time"] for r in rows} and len({r["time"] for r in rows}) >= 2  # sampled more than once
    assert float(mine["risk", "var.historical_99"]["value"]) == 0.031
    assert mine["risk", "breakers"]["level"] == "critical"
    assert float(mine["performance", "gross_exposure"]["value"]) == 1_000.0
    assert (float(mine["performance", "positions"]["value"]), float(mine["performance", "fills"]["value"])) == (1, 5)
    assert float(mine["performance", "allocation"]["value"]) == 0.5 and mine["performance", "halted"]["level"] == (
        "critical")
    gate = mine["gates", "drawdown"]
    assert (float(gate["value"]), float(gate["warning"]), float(gate["critical"]), gate["level"]) == (
        0.12, 0.10, 0.15, "warning")
    services = {r["metric"]: r for r in rows if r["group"] == "latency"}
    assert {f"{s}.up" for s in ("collector", "risk", "execution", "deployer")} <= set(services)
    # No service runs in this test: each reads down, at the critical level.
    assert all(services[f"{s}.up"]["value"] == "0.0" and services[f"{s}.up"]["level"] == "critical"
               for s in ("collector", "risk", "execution", "deployer"))

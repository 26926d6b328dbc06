"""`qmp portfolio optimise`, `test` and `apply` against a running deployer: three strategies' recorded equity
curves in the stack's database, budgets proposed from their daily returns, tested over 100 scenarios, one proposal
sent as allocation commands, each accepted, in force in the control bucket and in the audit trail with the operator
as its sender."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from qmp_core import bus
from qmp_ops.cli.main import app
from qmp_ops.replay import RunObserver, follow
from qmp_ops.runtime.supervisor import Stack, StackOptions

pytestmark = pytest.mark.system

VOLS = (0.004, 0.01, 0.025)


async def record_curves(database_url: str, strategies: list[str], days: int = 200) -> None:
    """Each strategy's book twice a day (its day's last equity is the one that counts), calm to wild."""
    rng = np.random.default_rng(3)
    start = datetime(2024, 1, 2, tzinfo=UTC)
    db = await asyncpg.connect(database_url)
    try:
        for strategy, vol in zip(strategies, VOLS, strict=True):
            equity = 1_000_000.0
            rows = []
            for day in range(days):
                noon = start + timedelta(days=day, hours=12)
                rows.append((noon, strategy, equity * (1 + vol)))  # a midday mark the close replaces
                equity *= 1.0 + vol * float(rng.standard_t(4)) + 0.0002
                rows.append((noon + timedelta(hours=9), strategy, equity))
            await db.executemany(
                "INSERT INTO equity_curve (ts, strategy, cash, equity, realized_pnl, unrealized_pnl, fees, "
                "gross_exposure, net_exposure, positions, working) VALUES ($1, $2, 0, $3, 0, 0, 0, 0, 0, 0, 0)",
                rows)
    finally:
        await db.close()


async def audit_of(database_url: str, strategies: list[str]) -> list[asyncpg.Record]:
    db = await asyncpg.connect(database_url)
    try:
        for _ in range(50):  # the deployer writes its audit rows just after it answers
            rows = await db.fetch("SELECT strategy, command, sender FROM control_audit WHERE strategy = ANY($1)",
                                  strategies)
            if len(rows) >= len(strategies):
                return rows
            await asyncio.sleep(0.1)
        return rows
    finally:
        await db.close()


def test_portfolio_when_optimised_and_applied_then_each_budget_is_an_audited_allocation(
        tmp_path: Path, unique_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    strategies = [f"pf{unique_id[:6]}{name}" for name in ("calm", "mid", "wild")]
    stack = Stack(StackOptions(home=tmp_path / ".qmp", services=("deployer",), share_connection=False))
    connection = stack.start_servers()
    try:
        asyncio.run(stack.start_services())
        asyncio.run(record_curves(connection.database_url, strategies))
        for name, value in (("QMP_NATS_URL", connection.nats_url), ("QMP_NATS_USER", connection.operator_user),
                            ("QMP_NATS_PASSWORD", connection.operator_password),
                            ("QMP_NATS_TLS_CA", connection.tls_ca), ("QMP_DATABASE_URL", connection.database_url)):
            monkeypatch.setenv(name, value)
        reports = tmp_path / "reports"

        optimised = CliRunner().invoke(app, ["portfolio", "optimise", "--strategies", ",".join(strategies),
                                             "--min-weight", "0.05", "--max-weight", "0.8", "--reports",
                                             str(reports), "--json"])
        assert optimised.exit_code == 0, optimised.output
        record = json.loads(optimised.output)
        tested = CliRunner().invoke(app, ["portfolio", "test", record["file"], "--scenarios", "100", "--workers", "1",
                                          "--reports", str(reports)])
        shown = CliRunner().invoke(app, ["portfolio", "apply", record["file"], "--method", "es_risk_parity"])
        assert asyncio.run(audit_of(connection.database_url, strategies)) == []  # without --confirm: nothing sent
        applied = CliRunner().invoke(app, ["portfolio", "apply", record["file"], "--method", "es_risk_parity",
                                           "--confirm"])
        audit = asyncio.run(audit_of(connection.database_url, strategies))

        async def bucket() -> dict[str, float]:
            nc = await connection.connect()
            try:
                entries = await bus.read_control_entries(nc.jetstream())
                return {s: entries.effective(s).allocation for s in strategies}
            finally:
                await nc.close()

        in_force = asyncio.run(bucket())
    finally:
        stack.stop()

    assert record["days"] == 199  # 200 closes make 199 daily returns; the midday marks never count
    parity = next(p for p in record["proposals"] if p["method"] == "es_risk_parity")["weights"]
    calm, mid, wild = (parity[s] for s in strategies)
    assert calm > mid > wild >= 0.05 - 1e-6 and sum(parity.values()) == pytest.approx(1.0)
    assert tested.exit_code == 0, tested.output
    (folder,) = reports.glob("portfolio-test-*")
    outcomes = json.loads((folder / "outcomes.json").read_text())
    assert len(outcomes["outcomes"]) == 4 * 100  # every proposal over every scenario
    summary = outcomes["summary"]
    # Out of sample too, an equal budget lets the wild strategy carry the tail: more ES than ES parity.
    assert summary["equal"]["es_median"] > summary["es_risk_parity"]["es_median"]
    kinds = {o["kind"] for o in outcomes["outcomes"]}
    assert kinds == {"bootstrap", "vol_x3", "corr_0.9", "crisis_2008", "crisis_2020"}
    assert (folder / "drawdowns.png").stat().st_size > 10_000 and "ES 99% median" in (folder / "report.md").read_text()
    assert shown.exit_code == 1 and "add --confirm" in shown.output
    assert applied.exit_code == 0, applied.output
    assert in_force == pytest.approx({s: round(parity[s], 6) for s in strategies})
    commands = {row["strategy"]: (json.loads(row["command"]), row["sender"]) for row in audit}
    assert set(commands) == set(strategies)
    for strategy, (command, sender) in commands.items():
        assert command["command"] == "set_allocation" and sender == connection.operator_user
        assert command["allocation"] == pytest.approx(round(parity[strategy], 6))


# The demo's strategy and two others from the lab, hosted by one execution instance through one replay of
# the bundled S&P 500 history: their books are the recorded returns the budgets are proposed from.
REPLAYED = {"vol_target": "qmp_lab.strategies.vol_target:VolatilityTarget",
            "mean_reversion": "qmp_lab.strategies.mean_reversion:MeanReversion",
            "momentum": "qmp_lab.strategies.momentum:CrossSectionalMomentum"}
REPLAY_START, REPLAY_END = "2017-01-03", "2018-12-31"


async def replay_books(stack: Stack, last_day: str) -> None:
    """Start the services and follow the replay until risk has valued the lockstep strategy's last day and
    execution has written every strategy's book of it."""
    until = int(pd.Timestamp(last_day, tz="UTC").value)
    observer = RunObserver("vol_target")
    nc = await stack.connection.connect(follow=True)
    await observer.start(nc)
    try:
        await stack.start_services()
        await follow(stack, observer, lambda o: bool(o.snapshots) and o.last_ts >= until)
    finally:
        await observer.stop()
        await nc.close()
    db = await asyncpg.connect(stack.connection.database_url)
    try:
        for _ in range(100):  # the books' rows follow the snapshots by a moment (written off the critical path)
            latest = await db.fetch("SELECT strategy, max(ts) AS ts FROM equity_curve GROUP BY strategy")
            if len(latest) == len(REPLAYED) and all(row["ts"].timestamp() * 1e9 >= until for row in latest):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"books not written through {last_day}: {latest}")
    finally:
        await db.close()


def test_portfolio_when_the_demo_strategy_and_two_others_are_replayed_then_their_books_are_budgeted_and_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    strategies = list(REPLAYED)
    stack = Stack(StackOptions(home=tmp_path / ".qmp", clock="replay", fresh=True, share_connection=False,
                               service_env={
                                   "collector": {"QMP_SOURCE": "history", "QMP_VENUE": "sp500",
                                                 "QMP_START": REPLAY_START, "QMP_END": REPLAY_END,
                                                 "QMP_REPLAY_RATE": "0", "QMP_LOCKSTEP_STRATEGY": "vol_target"},
                                   "execution": {"QMP_STRATEGIES": ",".join(f"{k}={v}" for k, v in REPLAYED.items()),
                                                 "QMP_ORDER_EVENTS": "per_batch"}}))
    connection = stack.start_servers()
    try:
        asyncio.run(replay_books(stack, REPLAY_END))
        for name, value in (("QMP_NATS_URL", connection.nats_url), ("QMP_NATS_USER", connection.operator_user),
                            ("QMP_NATS_PASSWORD", connection.operator_password),
                            ("QMP_NATS_TLS_CA", connection.tls_ca), ("QMP_DATABASE_URL", connection.database_url)):
            monkeypatch.setenv(name, value)
        reports = tmp_path / "reports"
        optimised = CliRunner().invoke(app, ["portfolio", "optimise", "--strategies", ",".join(strategies),
                                             "--since", "2018-01-02", "--reports", str(reports), "--json"])
        assert optimised.exit_code == 0, optimised.output
        record = json.loads(optimised.output)
        tested = CliRunner().invoke(app, ["portfolio", "test", record["file"], "--scenarios", "100", "--workers", "1",
                                          "--reports", str(reports)])
        applied = CliRunner().invoke(app, ["portfolio", "apply", record["file"], "--method", "hrp", "--confirm"])
        audit = asyncio.run(audit_of(connection.database_url, strategies))
    finally:
        stack.stop()

    # The books of the year after vol_target's year of warm-up: every trading day of 2018.
    assert record["first_day"].startswith("2018-01") and record["days"] >= 240
    assert {p["method"] for p in record["proposals"]} == {"es_risk_parity", "hrp", "mean_cvar", "equal"}
    for proposal in record["proposals"]:
        assert set(proposal["weights"]) == set(strategies)
        assert sum(proposal["weights"].values()) == pytest.approx(1.0)
    assert tested.exit_code == 0, tested.output
    (folder,) = reports.glob("portfolio-test-*")
    outcomes = json.loads((folder / "outcomes.json").read_text())
    assert len(outcomes["outcomes"]) == 4 * 100
    assert all(0.0 < row["es"] < 1.0 for row in outcomes["outcomes"])
    assert applied.exit_code == 0, applied.output
    hrp = next(p for p in record["proposals"] if p["method"] == "hrp")["weights"]
    commands = {row["strategy"]: (json.loads(row["command"]), row["sender"]) for row in audit
                if json.loads(row["command"])["command"] == "set_allocation"}
    assert {s: c["allocation"] for s, (c, _) in commands.items()} == pytest.approx(
        {s: round(w, 6) for s, w in hrp.items()})
    assert {sender for _, sender in commands.values()} == {connection.operator_user}

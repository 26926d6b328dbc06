"""Gates (engine/gates.py): readings of each metric, their levels and critical streaks, the monitor's sources."""

import msgspec
import pytest
from deployer_testkit import T0, make_plan

from qmp_core.messages import Fill, PortfolioSnapshot, RiskSnapshot
from qmp_deployer.engine.gates import Monitor, Reading, evaluate_gate

SECOND = 10**9


def snapshot(ts: int, **fields: object) -> RiskSnapshot:
    values = {"strategy": "s1", "ts_event": ts, "equity": 1e6, "var": {"historical_95": 0.01}, "es": {},
              "drawdown_24h": 0.02, "drawdown_max": 0.03, "volatility_ratio": 1.0, "breakers": []}
    values.update(fields)
    return RiskSnapshot(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "level", "streak"), [
    (0.05, "ok", 0), (0.10, "ok", 0), (0.11, "warning", 0), (0.15, "warning", 0), (0.16, "critical", 3),
    (None, "inconclusive", 2), (float("nan"), "inconclusive", 2),
])
def test_evaluate_gate_when_value_given_then_level_and_critical_streak(value, level, streak):
    spec = make_plan().metrics["drawdown"]
    previous = evaluate_gate("drawdown", spec, Reading(0.2, "ok", 1), None)
    previous = evaluate_gate("drawdown", spec, Reading(0.2, "ok", 2), previous)
    status = "ok" if value is not None else "no_data"
    result = evaluate_gate("drawdown", spec, Reading(value, status, 3), previous)
    assert (result.level, result.consecutive_critical) == (level, streak)
    assert (result.warning, result.critical) == (0.10, 0.15)


def test_reading_when_snapshot_older_than_limit_then_stale_with_its_age():
    monitor = Monitor()
    monitor.on_snapshot(snapshot(T0))
    spec = make_plan().metrics["drawdown"]
    assert monitor.reading("s1", spec, T0 + 899 * SECOND, 1.0).value == pytest.approx(0.02)
    stale = monitor.reading("s1", spec, T0 + 901 * SECOND, 1.0)
    assert (stale.value, stale.status) == (None, "stale") and "901s old" in stale.detail


def test_reading_when_per_allocation_then_loss_fraction_of_allocated_capital():
    monitor = Monitor()
    monitor.on_snapshot(snapshot(T0, drawdown_24h=0.012))
    spec = msgspec.structs.replace(make_plan().metrics["drawdown"], per_allocation=True)
    assert monitor.reading("s1", spec, T0, 0.1).value == pytest.approx(0.12)
    assert monitor.reading("s1", spec, T0, 0.0).status == "no_data"


def test_reading_when_older_snapshot_arrives_late_then_latest_kept():
    monitor = Monitor()
    monitor.on_snapshot(snapshot(T0 + SECOND, drawdown_24h=0.05))
    monitor.on_snapshot(snapshot(T0, drawdown_24h=0.01))
    assert monitor.reading("s1", make_plan().metrics["drawdown"], T0 + SECOND, 1.0).value == pytest.approx(0.05)


def test_reading_when_value_not_finite_then_source_failed():
    monitor = Monitor()
    monitor.on_snapshot(snapshot(T0, drawdown_24h=float("nan")))
    assert monitor.reading("s1", make_plan().metrics["drawdown"], T0, 1.0).status == "source_failed"


def test_monitor_when_fill_redelivered_then_counted_once_and_slippage_is_mean_size():
    monitor = Monitor()
    fills = [Fill(strategy="s1", order_id="o", fill_id=f"f{i}", symbol="A", side="BUY", quantity=1.0, price=1.0,
                  arrival_price=1.0, slippage_bps=bps, fee=0.0, ts_event=T0 + i) for i, bps in enumerate([10, -30])]
    assert [monitor.on_fill(f) for f in (*fills, fills[0])] == [True, True, False]
    reading = monitor.reading("s1", make_plan().metrics["slippage"], T0 + 5, 1.0)
    assert reading.value == pytest.approx(20.0)


def test_monitor_when_portfolio_and_var_known_then_gross_exposure_and_var_book():
    monitor = Monitor()
    monitor.on_portfolio(PortfolioSnapshot(strategy="s1", ts_event=T0, cash=0.0, equity=0.0, symbols=["A", "B"],
                                           quantities=[10.0, -5.0], prices=[100.0, 20.0]))
    monitor.on_snapshot(snapshot(T0))
    monitor.on_snapshot(snapshot(T0, strategy="s2", status="insufficient_data"))
    assert monitor.gross_exposure("s1") == pytest.approx(1100.0)
    assert monitor.var_book("historical_95") == {"s1": (0.01, 1e6)}


def test_probe_when_failed_then_source_failed_and_when_unknown_source_then_error():
    monitor = Monitor()
    monitor.on_probe("latency_ms", None, T0, "no reply")
    spec = msgspec.convert({"source": "latency_ms", "warning": 500, "critical": 1000, "action": "switch_endpoint"},
                           type(make_plan().metrics["drawdown"]))
    assert monitor.reading("s1", spec, T0, 1.0).status == "source_failed"
    with pytest.raises(ValueError, match="probe source"):
        monitor.on_probe("cpu", 1.0, T0)

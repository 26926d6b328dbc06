"""RiskEngine: stop-loss, stale data, news windows, positions, backtests and the snapshot's new fields."""

import json
from pathlib import Path

import numpy as np
import pytest

from qmp_core.clock import NS_PER_DAY, NS_PER_HOUR, TestClock
from qmp_core.messages import (
    BarBatch,
    BreakerReleased,
    BreakerTripped,
    Defensive,
    Halt,
    NewsEvent,
    PortfolioSnapshot,
    RiskSnapshot,
    TradingState,
    codec,
    encode,
)
from qmp_kernels.backtest import backtest_nb
from qmp_risk.config import RiskSettings
from qmp_risk.engine import BREAKER_NEWS, BREAKER_STALE, RiskEngine
from qmp_risk.news import load_calendar

T0 = 1_600_000_000 * 1_000_000_000


def make_engine(**overrides: object) -> RiskEngine:
    values: dict[str, object] = {"var_window": 30, "min_observations": 10, "bar_wait_s": 0.0}
    values.update(overrides)
    return RiskEngine(RiskSettings(**values), TestClock(T0))  # type: ignore[arg-type]


def bars(ts: int, symbols: list[str], closes: list[float]) -> BarBatch:
    return BarBatch(venue="test", ts_event=ts, symbols=symbols, open=closes, high=closes, low=closes, close=closes,
                    volume=[1.0] * len(symbols))


def book(ts: int, equity: float, symbols: list[str], quantities: list[float], prices: list[float],
         strategy: str = "s1") -> PortfolioSnapshot:
    return PortfolioSnapshot(strategy=strategy, ts_event=ts, cash=equity, equity=equity, symbols=symbols,
                             quantities=quantities, prices=prices)


# ---------------------------------------------------------------- stop-loss and positions
def test_stop_loss_when_position_down_15_percent_then_close_once_and_release_when_flat() -> None:
    engine = make_engine()
    engine.on_portfolio(book(T0, 10_000.0, ["A"], [10.0], [100.0]))
    engine.on_portfolio(book(T0 + NS_PER_DAY, 10_000.0, ["A"], [20.0], [90.0]))  # adds: entry 95
    result = engine.on_portfolio(book(T0 + 2 * NS_PER_DAY, 10_000.0, ["A"], [20.0], [80.0]))
    (close,) = result.closes
    assert (close.symbol, close.quantity, close.entry_price) == ("A", -20.0, pytest.approx(95.0))
    assert close.loss == pytest.approx(1 - 80 / 95) and close.command_id == f"risk:stop_loss:A:s1:{T0 + 2 * NS_PER_DAY}"
    (event,) = [e for e in result.events if e.breaker == "stop_loss:A"]
    assert isinstance(event, BreakerTripped) and event.value == pytest.approx(80 / 95 - 1) and "95" in event.detail
    assert "stop_loss:A" in result.snapshot.breakers and result.snapshot.positions[0].stop_loss
    again = engine.on_portfolio(book(T0 + 3 * NS_PER_DAY, 10_000.0, ["A"], [20.0], [70.0]))
    assert again.closes == () and not [e for e in again.events if e.breaker == "stop_loss:A"]
    flat = engine.on_portfolio(book(T0 + 4 * NS_PER_DAY, 10_000.0, ["A"], [0.0], [70.0]))
    assert [type(e) for e in flat.events if e.breaker == "stop_loss:A"] == [BreakerReleased]
    assert flat.snapshot.positions == [] and "stop_loss:A" not in flat.snapshot.breakers


def test_stop_loss_when_short_and_price_rises_then_fires_and_drawdown_from_peak_uses_lowest_price() -> None:
    engine = make_engine()
    engine.on_portfolio(book(T0, 10_000.0, ["B"], [-5.0], [100.0]))
    mid = engine.on_portfolio(book(T0 + NS_PER_DAY, 10_000.0, ["B"], [-5.0], [90.0])).snapshot.positions[0]
    assert mid.pnl_from_entry == pytest.approx(0.10) and mid.peak_price == 90.0
    result = engine.on_portfolio(book(T0 + 2 * NS_PER_DAY, 10_000.0, ["B"], [-5.0], [116.0]))
    position = result.snapshot.positions[0]
    assert position.drawdown_from_peak == pytest.approx(116 / 90 - 1)
    assert position.pnl_from_entry == pytest.approx(-0.16) and result.closes[0].quantity == 5.0


def test_position_when_sign_flips_then_new_entry_and_weight_signed() -> None:
    engine = make_engine()
    engine.on_portfolio(book(T0, 1_000.0, ["A"], [3.0], [100.0]))
    snapshot = engine.on_portfolio(book(T0 + NS_PER_DAY, 1_000.0, ["A"], [-2.0], [110.0])).snapshot
    (position,) = snapshot.positions
    assert position.entry_price == 110.0 and position.pnl_from_entry == 0.0
    assert position.weight == pytest.approx(-0.22)


# ---------------------------------------------------------------- stale data
def test_stale_data_when_held_symbol_has_no_bar_for_longer_than_limit_then_halt_latched() -> None:
    engine = make_engine(stale_data_s=2 * 86_400.0)
    for i in range(3):
        engine.on_bars(bars(T0 + i * NS_PER_DAY, ["A", "B"], [100.0, 50.0]))
    for i in range(3, 6):
        engine.on_bars(bars(T0 + i * NS_PER_DAY, ["B"], [50.0]))  # A stops after day 2
    ts = T0 + 5 * NS_PER_DAY
    result = engine.on_portfolio(book(ts, 1_000.0, ["A", "B"], [1.0, 1.0], [100.0, 50.0]))
    (event,) = [e for e in result.events if e.breaker == BREAKER_STALE]
    assert event.value == pytest.approx(3 * 86_400.0) and "no bar for A" in event.detail
    (command,) = [c.command for c in result.commands if c.breaker == BREAKER_STALE]
    assert isinstance(command, Halt) and "stale data" in command.reason
    assert BREAKER_STALE in result.snapshot.breakers
    later = engine.on_portfolio(book(ts + NS_PER_HOUR, 1_000.0, ["A", "B"], [1.0, 1.0], [100.0, 50.0]))
    assert not [e for e in later.events if e.breaker == BREAKER_STALE]  # latched: one trip


def test_stale_data_when_resumed_and_still_stale_then_trips_again_fail_closed() -> None:
    engine = make_engine(stale_data_s=3600.0)
    engine.on_bars(bars(T0, ["A"], [100.0]))
    engine.on_portfolio(book(T0, 1_000.0, ["A"], [1.0], [100.0]))
    tripped = engine.check(T0 + 2 * NS_PER_HOUR)
    assert [e.breaker for e in tripped[0].events] == [BREAKER_STALE]
    engine.on_trading_state(TradingState(strategy="s1", status="HALTED"))
    released = engine.on_trading_state(TradingState(strategy="s1", status="ACTIVE", ts_event=T0 + 3 * NS_PER_HOUR))
    assert [(type(e), e.breaker) for e in released] == [(BreakerReleased, BREAKER_STALE)]
    assert [e.breaker for e in engine.check(T0 + 3 * NS_PER_HOUR)[0].events] == [BREAKER_STALE]


def test_stale_data_when_flat_and_feed_never_started_then_no_trip_but_silent_feed_trips() -> None:
    engine = make_engine(stale_data_s=3600.0)
    engine.on_portfolio(book(T0, 1_000.0, [], [], []))
    assert engine.check(T0 + 10 * NS_PER_HOUR) == []
    engine.on_bars(bars(T0 + 10 * NS_PER_HOUR, ["A"], [1.0]))
    assert engine.check(T0 + 10 * NS_PER_HOUR + 10) == []
    (result,) = engine.check(T0 + 12 * NS_PER_HOUR)
    assert "no bar for any symbol" in result.events[0].detail


# ---------------------------------------------------------------- news
def news(event_id: str, start: int, end: int, impact: str = "high", strategies: list[str] | None = None) -> NewsEvent:
    return NewsEvent(event_id=event_id, name=f"event {event_id}", start=start, end=end, impact=impact,  # type: ignore[arg-type]
                     strategies=strategies or [])


def test_news_when_high_impact_window_opens_and_closes_then_defensive_with_cap_on_and_off() -> None:
    engine = make_engine(news_max_order_fraction=0.02)
    engine.on_news(news("fomc", T0 + NS_PER_HOUR, T0 + 3 * NS_PER_HOUR))
    engine.on_news(news("minor", T0, T0 + 10 * NS_PER_HOUR, impact="low"))
    assert [e.breaker for e in engine.on_portfolio(book(T0, 1_000.0, [], [], [])).events] == []
    opened = engine.on_portfolio(book(T0 + 2 * NS_PER_HOUR, 1_000.0, [], [], []))
    (command,) = [c.command for c in opened.commands if c.breaker == BREAKER_NEWS]
    assert isinstance(command, Defensive) and command.on and command.max_order_fraction == 0.02
    (event,) = opened.events
    assert event.value == pytest.approx(3600.0) and "fomc" in event.detail and BREAKER_NEWS in opened.snapshot.breakers
    (closed,) = engine.check(T0 + 3 * NS_PER_HOUR)
    assert isinstance(closed.events[0], BreakerReleased)
    assert isinstance(closed.commands[0].command, Defensive) and not closed.commands[0].command.on


def test_news_when_event_is_for_another_strategy_then_only_that_one_goes_defensive() -> None:
    engine = make_engine()
    engine.on_news(news("earnings", T0, T0 + NS_PER_HOUR, strategies=["s2"]))
    engine.on_portfolio(book(T0 + 1, 1_000.0, [], [], [], strategy="s1"))
    engine.on_portfolio(book(T0 + 1, 1_000.0, [], [], [], strategy="s2"))
    results = engine.check(T0 + 2)
    assert results == []
    assert BREAKER_NEWS in engine.on_portfolio(book(T0 + 3, 1_000.0, [], [], [], strategy="s2")).snapshot.breakers


def test_news_when_release_command_fails_then_next_check_sends_it_again() -> None:
    engine = make_engine()
    engine.on_news(news("cpi", T0, T0 + NS_PER_HOUR))
    engine.on_portfolio(book(T0, 1_000.0, [], [], []))
    (release,) = engine.check(T0 + NS_PER_HOUR)
    engine.on_command_failed("s1", release.commands[0])
    (retry,) = engine.check(T0 + NS_PER_HOUR + 1)
    assert not retry.commands[0].command.on  # type: ignore[union-attr]


def test_on_news_when_window_empty_then_rejected() -> None:
    with pytest.raises(ValueError, match="end must be after start"):
        make_engine().on_news(news("bad", T0, T0))


def test_load_calendar_when_json_and_csv_then_events_with_times_in_ns(tmp_path: Path) -> None:
    json_file = tmp_path / "calendar.json"
    json_file.write_text(json.dumps([{"event_id": "fomc", "name": "FOMC", "start": "2020-03-15T18:00:00Z",
                                      "end": 1584396000000000000, "impact": "high"}]))
    csv_file = tmp_path / "calendar.csv"
    csv_file.write_text("event_id,name,start,end,impact\nnfp,Payrolls,2020-03-06 13:30,2020-03-06 15:00,\n")
    (fomc,) = load_calendar(json_file)
    (nfp,) = load_calendar(csv_file)
    assert fomc.start == 1584295200000000000 and fomc.end == 1584396000000000000
    assert nfp.impact == "high" and nfp.end - nfp.start == 90 * 60 * 1_000_000_000
    bad = tmp_path / "bad.csv"
    bad.write_text("event_id,name,start,end\nx,X,2020-01-02,2020-01-01\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2"):
        load_calendar(bad)


# ---------------------------------------------------------------- snapshot contents and backtests
def feed(engine: RiskEngine, closes: np.ndarray, symbols: list[str]) -> list[int]:
    stamps = []
    for i, row in enumerate(closes):
        ts = T0 + i * NS_PER_DAY
        engine.on_bars(bars(ts, symbols, [float(v) for v in row]))
        stamps.append(ts)
    return stamps


def test_backtests_when_held_book_then_pairs_each_forecast_with_next_hypothetical_return() -> None:
    engine = make_engine()
    rng = np.random.default_rng(3)
    closes = 100.0 * np.cumprod(1 + rng.standard_t(4, size=(80, 2)) * 0.01, axis=0)
    stamps = feed(engine, closes[:31], ["A", "B"])
    quantities = [10.0, -4.0]
    forecasts, realized = [], []
    snapshot: RiskSnapshot | None = None
    for t in range(31, 80):
        stamps.append(T0 + t * NS_PER_DAY)
        engine.on_bars(bars(stamps[t], ["A", "B"], [float(v) for v in closes[t]]))
        prices = [float(p) for p in closes[t]]
        snapshot = engine.on_portfolio(book(stamps[t], 5_000.0, ["A", "B"], quantities, prices)).snapshot
        forecasts.append((snapshot.var["historical_99"], snapshot.es["historical_99"]))
        if t > 31:
            realized.append(float(np.dot(quantities, closes[t] - closes[t - 1])) / 5_000.0)
    assert snapshot is not None
    result = snapshot.backtests["historical_99"]
    expected, _ = backtest_nb(np.array(realized), np.array([f[0] for f in forecasts[:-1]]),
                              np.array([f[1] for f in forecasts[:-1]]), 0.99)
    assert result.observations == len(realized) == 48
    assert result.exceptions == int(expected[1]) and result.kupiec_p == pytest.approx(expected[4])
    assert result.zone in ("green", "yellow", "red") and set(snapshot.backtests) >= {"normal_99", "fhs_garch_975"}
    assert "evt_99" not in snapshot.backtests  # no EVT forecast on 30 scenarios, so nothing to backtest
    decoded = codec(RiskSnapshot).decode(encode(snapshot))  # no NaN anywhere: it must round-trip as JSON
    assert decoded == snapshot


def test_snapshot_when_held_book_then_positions_symbol_risk_and_pnl_var_present() -> None:
    engine = make_engine()
    rng = np.random.default_rng(5)
    closes = 50.0 * np.cumprod(1 + rng.normal(0, 0.01, size=(60, 2)), axis=0)
    stamps = feed(engine, closes, ["A", "B"])
    snapshot = None
    for t in range(35, 60):
        equity = 1_000.0 + t
        snapshot = engine.on_portfolio(book(stamps[t], equity, ["A", "B"], [5.0, 0.0],
                                            [float(p) for p in closes[t]])).snapshot
    assert snapshot is not None
    (position,) = snapshot.positions
    returns = closes[1:, 0] / closes[:-1, 0] - 1
    window = returns[-30:] * position.weight
    k = int(np.floor(29 * 0.01))
    assert position.var["historical_99"] == pytest.approx(-np.sort(window)[k], rel=1e-12)
    assert set(snapshot.symbol_risk) == {"A"}
    assert snapshot.symbol_risk["A"]["historical_99"] == pytest.approx(-np.sort(returns[-30:])[k], rel=1e-12)
    assert "pnl_historical_99" in snapshot.var and snapshot.volatility is not None
    assert snapshot.drawdown == 0.0  # equity only rose


def test_snapshot_when_positions_miss_different_bars_then_each_position_var_uses_its_own_returns() -> None:
    engine = make_engine()
    rng = np.random.default_rng(11)
    closes = 50.0 * np.cumprod(1 + rng.normal(0, 0.01, size=(60, 3)), axis=0)
    closes[[40, 41, 50], 1] = np.nan  # B misses three bars, C none; A misses one
    closes[45, 0] = np.nan
    stamps = feed(engine, closes, ["A", "B", "C"])
    snapshot = None
    for t in range(35, 60):
        marks = [float(p) if np.isfinite(p) else 50.0 for p in closes[t]]
        snapshot = engine.on_portfolio(book(stamps[t], 1_000.0 + t, ["A", "B", "C"], [5.0, -3.0, 2.0],
                                            marks)).snapshot
    assert snapshot is not None
    by_symbol = {position.symbol: position for position in snapshot.positions}
    for column, symbol in enumerate(["A", "B", "C"]):
        returns = closes[-31:, column][1:] / closes[-31:, column][:-1] - 1  # the window's 30 row pairs
        window = returns[np.isfinite(returns)] * by_symbol[symbol].weight
        k = int(np.floor((len(window) - 1) * 0.01))
        assert by_symbol[symbol].var["historical_99"] == pytest.approx(-np.sort(window)[k], rel=1e-12), symbol
    assert len({len(p.var) for p in snapshot.positions}) == 1

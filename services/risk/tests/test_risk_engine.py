"""RiskEngine: snapshot numbers from known positions and returns, breakers, latch and hysteresis."""

from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from qmp_core.clock import NS_PER_DAY, NS_PER_HOUR, TestClock
from qmp_core.messages import (
    BarBatch,
    BreakerReleased,
    BreakerTripped,
    Halt,
    PortfolioSnapshot,
    ReduceOrderSize,
    TradingState,
)
from qmp_kernels.drawdown import trailing_drawdown_nb
from qmp_risk.config import RiskSettings
from qmp_risk.engine import (
    BREAKER_DRAWDOWN,
    BREAKER_VOLATILITY,
    BatchRejected,
    RiskEngine,
    SnapshotRejected,
)

T0 = 1_600_000_000 * 1_000_000_000


def make_engine(**overrides: object) -> RiskEngine:
    values: dict[str, object] = {"var_window": 30, "min_observations": 10, "bar_wait_s": 0.0}
    values.update(overrides)
    return RiskEngine(RiskSettings(**values), TestClock(T0))  # type: ignore[arg-type]


def bars(ts: int, symbols: list[str], closes: list[float], venue: str = "test", chunk: int = 0,
         chunks: int = 1) -> BarBatch:
    return BarBatch(venue=venue, ts_event=ts, symbols=symbols, open=closes, high=closes, low=closes,
                    close=closes, volume=[1.0] * len(symbols), chunk=chunk, chunks=chunks)


def portfolio(ts: int, equity: float, symbols: list[str] | None = None, quantities: list[float] | None = None,
              prices: list[float] | None = None, strategy: str = "s1") -> PortfolioSnapshot:
    return PortfolioSnapshot(strategy=strategy, ts_event=ts, cash=equity, equity=equity, symbols=symbols or [],
                             quantities=quantities or [], prices=prices or [])


def feed_closes(engine: RiskEngine, closes: np.ndarray, symbols: list[str]) -> list[int]:
    """Feed one bar batch per row of closes, a day apart; return the timestamps."""
    stamps = []
    for i, row in enumerate(closes):
        ts = T0 + i * NS_PER_DAY
        engine.on_bars(bars(ts, symbols, [float(v) for v in row]))
        stamps.append(ts)
    return stamps


def random_closes(rows: int, columns: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.cumprod(1.0 + rng.standard_t(4, size=(rows, columns)) * 0.01, axis=0)


# ---------------------------------------------------------------- VaR / ES
def test_on_portfolio_when_known_positions_and_returns_then_var_es_match_independent_revaluation() -> None:
    engine = make_engine()
    closes = random_closes(41, 3)
    stamps = feed_closes(engine, closes, ["A", "B", "C"])
    quantities = [10.0, -5.0, 0.0]
    prices = [float(closes[-1, 0]), float(closes[-1, 1]), float(closes[-1, 2])]
    equity = 5_000.0
    result = engine.on_portfolio(portfolio(stamps[-1], equity, ["A", "B", "C"], quantities, prices))

    returns = closes[1:] / closes[:-1] - 1.0
    window = returns[-30:, :2]
    pnl = window @ (np.array(quantities[:2]) * np.array(prices[:2])) / equity
    losses = np.sort(-pnl)[::-1]  # worst first
    snapshot = result.snapshot
    assert snapshot.status == "ok"
    assert snapshot.observations == 30
    for level in (0.95, 0.99):
        key = f"{round(level * 100)}"
        tail = int(np.floor(29 * (1 - level))) + 1  # observations at or beyond the 'lower' quantile
        assert snapshot.var[f"historical_{key}"] == pytest.approx(losses[tail - 1], rel=1e-12)
        assert snapshot.es[f"historical_{key}"] == pytest.approx(losses[:tail].mean(), rel=1e-12)
        fit = NormalDist(pnl.mean(), pnl.std(ddof=1))
        z = NormalDist().inv_cdf(level)
        assert snapshot.var[f"normal_{key}"] == pytest.approx(-fit.inv_cdf(1 - level), rel=1e-10)
        assert snapshot.es[f"normal_{key}"] == pytest.approx(
            fit.stdev * NormalDist().pdf(z) / (1 - level) - fit.mean, rel=1e-10)
    # 30 scenarios hold 3 peaks over a 90% threshold: too few for EVT, which says so instead of guessing
    methods = ("historical", "normal", "student_t", "cornish_fisher", "fhs_ewma", "fhs_garch")
    keys = {f"{m}_{level}" for m in methods for level in ("95", "975", "99")}
    assert set(snapshot.var) == keys | {f"{key}_10d" for key in keys}
    assert snapshot.errors["evt"].startswith("insufficient_data")
    assert snapshot.var["historical_99_10d"] == pytest.approx(np.sqrt(10) * snapshot.var["historical_99"])
    assert snapshot.breakers == []


def test_on_portfolio_when_later_bars_already_arrived_then_var_uses_only_bars_up_to_its_ts() -> None:
    closes = random_closes(41, 1, seed=3)
    quiet = make_engine()
    stamps = feed_closes(quiet, closes, ["A"])
    early = make_engine()
    feed_closes(early, closes, ["A"])
    early.on_bars(bars(stamps[-1] + NS_PER_DAY, ["A"], [float(closes[-1, 0]) * 0.5]))
    snap = portfolio(stamps[-1], 1_000.0, ["A"], [3.0], [float(closes[-1, 0])])
    assert early.on_portfolio(snap).snapshot.var == quiet.on_portfolio(snap).snapshot.var
    assert quiet.on_portfolio(snap).snapshot.observations == 30


def test_on_portfolio_when_another_venue_prints_the_same_symbol_absurdly_then_var_is_as_without_it() -> None:
    # issue 12: one batch on another venue with AAPL at 1e6 used to mark the book at that price in the
    # scenarios (VaR of a 10% position near 100%); prices are kept per (venue, symbol).
    closes = random_closes(41, 1)
    clean, polluted = make_engine(), make_engine()
    stamps = feed_closes(clean, closes, ["AAPL"])
    feed_closes(polluted, closes, ["AAPL"])
    for ts in stamps[-5:]:
        polluted.on_bars(bars(ts, ["AAPL"], [1e6], venue="elsewhere"))
    book = portfolio(stamps[-1], 10_000.0, ["AAPL"], [10.0], [float(closes[-1, 0])])
    book = PortfolioSnapshot(**{**{f: getattr(book, f) for f in book.__struct_fields__}, "venue": "test"})

    expected, got = clean.on_portfolio(book).snapshot, polluted.on_portfolio(book).snapshot

    assert got.status == expected.status == "ok"
    assert got.var == expected.var and got.es == expected.es
    assert got.var["historical_99"] < 0.01


def test_on_portfolio_when_fewer_returns_than_minimum_then_insufficient_data_and_no_var_entries() -> None:
    engine = make_engine(min_observations=10)
    stamps = feed_closes(engine, random_closes(10, 1), ["A"])  # 9 returns
    snapshot = engine.on_portfolio(portfolio(stamps[-1], 1_000.0, ["A"], [1.0], [100.0])).snapshot
    assert snapshot.status == "insufficient_data"
    assert snapshot.var == {} and snapshot.es == {}
    assert snapshot.observations == 9


def test_on_portfolio_when_held_symbol_has_no_bars_then_insufficient_data() -> None:
    engine = make_engine()
    stamps = feed_closes(engine, random_closes(40, 1), ["A"])
    snapshot = engine.on_portfolio(portfolio(stamps[-1], 1_000.0, ["A", "Z"], [1.0, 2.0], [100.0, 5.0])).snapshot
    assert snapshot.status == "insufficient_data"
    assert snapshot.var == {} and snapshot.observations == 0


def test_on_portfolio_when_a_bar_is_missing_then_that_scenario_is_dropped() -> None:
    engine = make_engine()
    closes = random_closes(41, 2, seed=5)
    for i, row in enumerate(closes):
        symbols = ["A"] if i == 20 else ["A", "B"]  # B has no bar at row 20: returns 20 and 21 are unknown
        engine.on_bars(bars(T0 + i * NS_PER_DAY, symbols, [float(v) for v in row[: len(symbols)]]))
    snap = portfolio(T0 + 40 * NS_PER_DAY, 1_000.0, ["A", "B"], [1.0, 1.0], [100.0, 100.0])
    assert engine.on_portfolio(snap).snapshot.observations == 28


def test_on_portfolio_when_flat_then_var_is_zero() -> None:
    engine = make_engine()
    stamps = feed_closes(engine, random_closes(40, 2), ["A", "B"])
    snapshot = engine.on_portfolio(portfolio(stamps[-1], 1_000.0, ["A"], [0.0], [100.0])).snapshot
    assert snapshot.status == "ok"
    assert snapshot.var["historical_99"] == 0.0 and snapshot.es["normal_95"] == 0.0


def test_on_portfolio_when_equity_not_positive_then_status_says_so_and_drawdown_trips() -> None:
    engine = make_engine()
    stamps = feed_closes(engine, random_closes(40, 1), ["A"])
    engine.on_portfolio(portfolio(stamps[-2], 1_000.0, ["A"], [1.0], [100.0]))
    result = engine.on_portfolio(portfolio(stamps[-1], -50.0, ["A"], [1.0], [100.0]))
    assert result.snapshot.status == "non_positive_equity"
    assert result.snapshot.var == {}
    assert result.snapshot.drawdown_24h == pytest.approx(1.05)
    assert [e.breaker for e in result.events] == [BREAKER_DRAWDOWN]


# ---------------------------------------------------------------- input checks
def test_on_portfolio_when_columns_disagree_then_rejected() -> None:
    engine = make_engine()
    with pytest.raises(SnapshotRejected, match="column lengths differ"):
        engine.on_portfolio(portfolio(T0, 1_000.0, ["A", "B"], [1.0], [100.0, 1.0]))


@pytest.mark.parametrize(("equity", "price", "strategy"), [(float("nan"), 1.0, "s1"), (100.0, 0.0, "s1"),
                                                           (0.0, 1.0, "s1"), (100.0, 1.0, "bad.id")])
def test_on_portfolio_when_values_invalid_then_rejected(equity: float, price: float, strategy: str) -> None:
    engine = make_engine()
    with pytest.raises(SnapshotRejected):
        engine.on_portfolio(portfolio(T0, equity, ["A"], [1.0], [price], strategy=strategy))


def test_on_portfolio_when_out_of_order_then_rejected_and_when_repeated_then_same_result() -> None:
    engine = make_engine()
    first = engine.on_portfolio(portfolio(T0 + NS_PER_HOUR, 100.0))
    with pytest.raises(SnapshotRejected, match="out-of-order"):
        engine.on_portfolio(portfolio(T0, 100.0))
    again = engine.on_portfolio(portfolio(T0 + NS_PER_HOUR, 100.0))
    assert again.duplicate and not first.duplicate
    assert again.snapshot == first.snapshot


def test_on_bars_when_out_of_order_then_rejected_and_when_redelivered_then_ignored() -> None:
    engine = make_engine()
    assert engine.on_bars(bars(T0 + 2, ["A"], [1.0])) is not None
    assert engine.on_bars(bars(T0 + 2, ["A"], [1.0])) is None
    with pytest.raises(BatchRejected, match="out-of-order"):
        engine.on_bars(bars(T0 + 1, ["A"], [1.0]))


def test_on_bars_when_some_rows_invalid_then_they_are_reported_and_the_rest_kept() -> None:
    engine = make_engine()
    validated = engine.on_bars(bars(T0, ["A", "B", "C"], [1.0, float("nan"), -2.0]))
    assert validated is not None
    assert validated.symbols == ["A"]
    assert [symbol for symbol, _ in validated.rejected] == ["B", "C"]
    assert engine.history.symbols == 1


def test_on_bars_when_more_listings_than_risk_tracks_then_new_ones_rejected_with_the_reason_and_memory_bounded(
) -> None:
    # issue 12: one ingest of 60,000 symbols grew risk from 235 MB to 1 GB for good (about 12 KB a listing).
    engine = make_engine(max_listings=3)
    symbols = ["A", "B", "C", "D", "E"]

    first = engine.on_bars(bars(T0, symbols, [10.0, 11.0, 12.0, 13.0, 14.0]))
    again = engine.on_bars(bars(T0 + NS_PER_DAY, symbols, [10.5, 11.5, 12.5, 13.5, 14.5]))
    elsewhere = engine.on_bars(bars(T0 + NS_PER_DAY, ["A"], [10.0], venue="other"))

    assert first is not None and again is not None and elsewhere is not None
    assert first.symbols == again.symbols == ["A", "B", "C"]
    assert [symbol for symbol, _ in first.rejected] == ["D", "E"] == [symbol for symbol, _ in again.rejected]
    assert all("at most 3 listings" in reason for _, reason in first.rejected)
    assert [symbol for symbol, _ in elsewhere.rejected] == ["A"]  # another venue's A is another listing
    assert engine.history.symbols == 3 and engine.symbols is not None and engine.symbols.symbols == 3


def test_bar_watermark_when_chunks_arrive_then_advances_only_when_all_are_in() -> None:
    engine = make_engine()
    engine.on_bars(bars(T0, ["A"], [1.0], chunk=0, chunks=2))
    assert engine.bar_watermark == 0
    engine.on_bars(bars(T0, ["B"], [1.0], chunk=1, chunks=2))
    assert engine.bar_watermark == T0


# ---------------------------------------------------------------- drawdown
def test_drawdown_breaker_when_14_percent_in_24h_then_not_tripped() -> None:
    engine = make_engine()
    engine.on_portfolio(portfolio(T0, 100.0))
    result = engine.on_portfolio(portfolio(T0 + 20 * NS_PER_HOUR, 86.0))
    assert result.snapshot.drawdown_24h == pytest.approx(0.14)
    assert result.events == () and result.commands == ()
    assert result.snapshot.breakers == []


def test_drawdown_breaker_when_over_15_percent_in_24h_then_trips_once_with_a_halt() -> None:
    engine = make_engine()
    engine.on_portfolio(portfolio(T0, 100.0))
    ts = T0 + 23 * NS_PER_HOUR
    result = engine.on_portfolio(portfolio(ts, 84.9))
    assert len(result.events) == 1
    event = result.events[0]
    assert isinstance(event, BreakerTripped)
    assert (event.breaker, event.action, event.threshold) == (BREAKER_DRAWDOWN, "halt", 0.15)
    assert event.value == pytest.approx(0.151)
    command = result.commands[0].command
    assert isinstance(command, Halt)
    assert command.issued_by == "risk" and command.command_id == f"risk:drawdown_24h:s1:{ts}"
    assert result.snapshot.breakers == [BREAKER_DRAWDOWN]
    deeper = engine.on_portfolio(portfolio(ts + NS_PER_HOUR, 80.0))
    assert deeper.events == () and deeper.commands == ()
    assert deeper.snapshot.breakers == [BREAKER_DRAWDOWN]


def test_drawdown_breaker_when_the_peak_is_older_than_24h_then_not_tripped() -> None:
    engine = make_engine()
    engine.on_portfolio(portfolio(T0, 100.0))
    engine.on_portfolio(portfolio(T0 + 2 * NS_PER_HOUR, 95.0))
    result = engine.on_portfolio(portfolio(T0 + 25 * NS_PER_HOUR, 84.0))
    assert result.snapshot.drawdown_24h == pytest.approx(1 - 84 / 95)
    assert result.snapshot.drawdown_max == pytest.approx(0.16)
    assert result.events == ()


def test_drawdown_when_random_equity_then_matches_trailing_and_running_kernels() -> None:
    engine = make_engine(drawdown_halt=1.0)
    rng = np.random.default_rng(8)
    stamps = T0 + np.cumsum(rng.integers(1, 6 * NS_PER_HOUR, 300)).astype(np.int64)
    equity = 1_000.0 * np.cumprod(1.0 + rng.normal(0.0, 0.02, 300))
    seen_24h, seen_max = [], []
    for ts, value in zip(stamps, equity, strict=True):
        snapshot = engine.on_portfolio(portfolio(int(ts), float(value))).snapshot
        seen_24h.append(snapshot.drawdown_24h)
        seen_max.append(snapshot.drawdown_max)
    expected_24h, _ = trailing_drawdown_nb(stamps, equity, 24 * NS_PER_HOUR)
    np.testing.assert_allclose(seen_24h, expected_24h, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(seen_max, np.maximum.accumulate(1 - equity / np.maximum.accumulate(equity)),
                               rtol=1e-12, atol=1e-15)


def trip(engine: RiskEngine, start: int) -> int:
    engine.on_portfolio(portfolio(start, 100.0))
    result = engine.on_portfolio(portfolio(start + NS_PER_HOUR, 80.0))
    assert [e.breaker for e in result.events] == [BREAKER_DRAWDOWN]
    return start + NS_PER_HOUR


def test_drawdown_latch_when_resumed_after_halt_then_released_and_can_trip_again() -> None:
    engine = make_engine()
    ts = trip(engine, T0)
    assert engine.on_trading_state(TradingState(strategy="s1", status="HALTED", ts_event=ts)) == []
    released = engine.on_trading_state(TradingState(strategy="s1", status="ACTIVE", ts_event=ts + 1))
    assert len(released) == 1 and isinstance(released[0], BreakerReleased)
    assert released[0].breaker == BREAKER_DRAWDOWN
    again = engine.on_portfolio(portfolio(ts + 2 * NS_PER_HOUR, 79.0))
    assert [type(e) for e in again.events] == [BreakerTripped]
    assert again.commands[0].command.command_id == f"risk:drawdown_24h:s1:{ts + 2 * NS_PER_HOUR}"


def test_drawdown_latch_when_active_state_arrives_before_the_halt_took_effect_then_still_latched() -> None:
    engine = make_engine()
    ts = trip(engine, T0)
    assert engine.on_trading_state(TradingState(strategy="s1", status="ACTIVE")) == []
    result = engine.on_portfolio(portfolio(ts + NS_PER_HOUR, 78.0))
    assert result.events == ()
    assert result.snapshot.breakers == [BREAKER_DRAWDOWN]


def test_drawdown_latch_when_halt_accepted_then_a_resume_releases_it() -> None:
    engine = make_engine()
    start = T0
    engine.on_portfolio(portfolio(start, 100.0))
    command = engine.on_portfolio(portfolio(start + NS_PER_HOUR, 80.0)).commands[0]
    engine.on_control_reply("s1", command, accepted=True)
    released = engine.on_trading_state(TradingState(strategy="ALL", status="REDUCING"))
    assert [e.breaker for e in released] == [BREAKER_DRAWDOWN]


def test_drawdown_latch_when_halt_undelivered_then_next_snapshot_trips_again() -> None:
    engine = make_engine()
    engine.on_portfolio(portfolio(T0, 100.0))
    command = engine.on_portfolio(portfolio(T0 + NS_PER_HOUR, 80.0)).commands[0]
    engine.on_command_failed("s1", command)
    result = engine.on_portfolio(portfolio(T0 + 2 * NS_PER_HOUR, 80.0))
    assert [c.breaker for c in result.commands] == [BREAKER_DRAWDOWN]


# ---------------------------------------------------------------- volatility
def equity_path(returns: np.ndarray) -> np.ndarray:
    return 1_000.0 * np.concatenate([[1.0], np.cumprod(1.0 + returns)])


def test_volatility_breaker_when_ratio_crosses_limits_then_trips_above_2_and_releases_below_1_5() -> None:
    rng = np.random.default_rng(12)
    calm = rng.normal(0.0, 0.004, 40)
    storm = rng.normal(0.0, 0.03, 6)
    after = rng.normal(0.0, 0.004, 40)
    equity = equity_path(np.concatenate([calm, storm, after]))
    engine = make_engine(vol_window=5, vol_average_window=10)
    returns = pd.Series(equity).pct_change()
    vol = returns.rolling(5).std()
    expected_ratio = (vol / vol.rolling(10).mean()).fillna(1.0).to_numpy()

    active = False
    band_steps = 0
    for i, value in enumerate(equity):
        result = engine.on_portfolio(portfolio(T0 + i * NS_PER_DAY, float(value)))
        ratio = expected_ratio[i]
        assert result.snapshot.volatility_ratio == pytest.approx(ratio, rel=1e-9)
        vol_events = [e for e in result.events if e.breaker == BREAKER_VOLATILITY]
        vol_commands = [c.command for c in result.commands if c.breaker == BREAKER_VOLATILITY]
        if not active and ratio > 2.0:
            active = True
            assert [type(e) for e in vol_events] == [BreakerTripped]
            assert vol_events[0].action == "size_multiplier=0.5"
            assert isinstance(vol_commands[0], ReduceOrderSize) and vol_commands[0].factor == 0.5
        elif active and ratio < 1.5:
            active = False
            assert [type(e) for e in vol_events] == [BreakerReleased]
            assert vol_events[0].action == "size_multiplier=1.0"
            assert isinstance(vol_commands[0], ReduceOrderSize) and vol_commands[0].factor == 1.0
        else:
            assert vol_events == [] and vol_commands == []
            band_steps += active and 1.5 <= ratio <= 2.0
        assert (BREAKER_VOLATILITY in result.snapshot.breakers) == active
    assert band_steps > 0, "the scenario must hold the ratio between the limits while tripped"
    assert not active


def test_volatility_ratio_when_history_too_short_then_one() -> None:
    engine = make_engine()
    for i in range(5):
        snapshot = engine.on_portfolio(portfolio(T0 + i * NS_PER_DAY, 100.0 + 10 * (-1) ** i)).snapshot
        assert snapshot.volatility_ratio == 1.0


def test_volatility_breaker_when_strategy_trades_again_after_a_flat_month_then_no_trip() -> None:
    # issue 11 #5: flat for 20 days, then trading: the ratio read exactly 20.0 and the breaker halved size.
    rng = np.random.default_rng(5)
    returns = np.concatenate([np.zeros(30), rng.normal(0.0, 0.01, 40)])
    engine = make_engine(vol_window=10, vol_average_window=20)

    trips = []
    for i, value in enumerate(equity_path(returns)):
        result = engine.on_portfolio(portfolio(T0 + i * NS_PER_DAY, float(value)))
        trips += [e for e in result.events if e.breaker == BREAKER_VOLATILITY and isinstance(e, BreakerTripped)]
        assert result.snapshot.volatility_ratio < 3.0

    assert trips == []

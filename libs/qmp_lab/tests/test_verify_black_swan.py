"""black_swan: scenarios as stated, breakers really off, and a short replay through the real stack."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qmp_core.datasets import load_sp500_prices
from qmp_lab.verify import black_swan
from qmp_lab.verify.core import StrategyTarget, VerifyContext
from qmp_ops.replay import stack_replay

HERE = Path(__file__).resolve().parent
REFERENCE = StrategyTarget("qmp_lab.strategies.vol_target:VolatilityTarget")


def test_gap_1987_frame_when_built_then_basket_falls_20_5_percent_on_one_day_after_real_calm_prices():
    frame = black_swan.gap_1987_frame(np.random.default_rng(0))
    base = load_sp500_prices(*black_swan.GAP_BASE)

    basket = (frame / frame.shift(1) - 1.0).mean(axis=1)

    pd.testing.assert_frame_equal(frame.iloc[:len(base)], base)
    assert basket.min() == pytest.approx(-0.2047, abs=1e-12)
    assert basket.idxmin() == frame.index[len(base) + 3]


def test_stack_options_when_breakers_off_then_every_breaker_out_of_reach_and_vol_target_stated(tmp_path):
    episode = black_swan.Episode("t", "t", "2020-02-03", "2020-03-31", frame=load_sp500_prices("2020-01-02",
                                                                                              "2020-03-31"))
    config = black_swan.strategy_config(REFERENCE, 0.07)
    env = black_swan.replay_env("abc", REFERENCE, config, episode, False, tmp_path / "s")

    risk = env["risk"]
    assert risk["QMP_DRAWDOWN_HALT"] == "1.0" and risk["QMP_STOP_LOSS"] == "1.0"
    assert float(risk["QMP_VOL_RATIO_LIMIT"]) > 1e6
    assert '"target_volatility": 0.07' in env["execution"]["QMP_STRATEGY_CONFIG"]
    replayed = pd.read_csv(env["collector"]["QMP_FILE"], index_col=0, parse_dates=True)
    assert len(replayed) == len(episode.frame)
    on = black_swan.replay_env("abc", REFERENCE, config, episode, True, tmp_path / "s")
    assert on["risk"] == {}


def test_run_when_no_stack_replay_given_then_verification_error_says_how_to_run_it(tmp_path):
    ctx = VerifyContext(target=REFERENCE, out_dir=tmp_path, home=tmp_path / ".qmp", quick=True)

    with pytest.raises(black_swan.VerificationError, match="qmp verify"):
        black_swan.run(ctx)


def test_simulated_crisis_frame_when_drawn_then_crisis_days_come_from_the_crash_pool():
    frame = black_swan.simulated_crisis_frame(np.random.default_rng(4), days=40)
    base_rows = len(load_sp500_prices(*black_swan.GAP_BASE))

    basket = (frame / frame.shift(1) - 1.0).mean(axis=1).iloc[base_rows:]

    assert len(basket) == 40
    assert basket.std() > 0.02  # crash-day volatility, several times a calm day's


@pytest.mark.system
def test_black_swan_run_when_short_episode_replayed_through_stack_then_drawdowns_measured_both_ways(tmp_path):
    prices = load_sp500_prices("2020-01-02", "2020-04-03")
    episode = black_swan.Episode("covid-short", "COVID crash (short)", "2020-02-19", "2020-04-03", frame=prices)
    ctx = VerifyContext(target=StrategyTarget("leaky_strategies:CleanMomentum", pythonpath=str(HERE)),
                        out_dir=tmp_path, home=tmp_path / ".qmp", quick=True, options={"episode_list": [episode]},
                        stack_replay=stack_replay)

    result = black_swan.run(ctx)

    runs = result.metrics["episodes"]
    on, off = runs["covid-short breakers on"], runs["covid-short breakers off"]
    assert on["orders_accepted"] > 0 and off["orders_accepted"] > 0
    assert 0.0 <= on["max_drawdown"] < 1.0
    assert on["benchmark_drawdown"] > 0.2  # the basket really crashed in the window
    assert not [e for e in off["breaker_events"] if e.get("event") == "BreakerTripped"]
    assert result.status in ("pass", "fail")
    assert (tmp_path / result.charts[0]).stat().st_size > 0


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("QMP_SLOW") != "1", reason="minutes of replays: set QMP_SLOW=1")
def test_black_swan_run_when_reference_strategy_at_10_percent_vol_then_drawdown_under_20_percent(tmp_path):
    ctx = VerifyContext(target=REFERENCE, out_dir=tmp_path, home=tmp_path / ".qmp", options={"vol_target": 0.10},
                        stack_replay=stack_replay)

    result = black_swan.run(ctx)

    assert result.status == "pass", [c.detail for c in result.checks]

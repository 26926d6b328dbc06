"""fat_tail: backtest arithmetic, fat-tail methods against normal on fat-tailed data, honest 2008 zone."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qmp_core.datasets import load_sp500_index, load_sp500_prices
from qmp_kernels.methods import METHOD_NAMES
from qmp_lab.verify import fat_tail
from qmp_lab.verify.core import StrategyTarget, VerifyContext


def test_backtest_when_losses_exceed_var_then_counts_them_and_their_coverage():
    realized = np.array([-0.05, 0.01, -0.01, -0.03, np.nan])
    var = np.full(5, 0.02)
    es = np.full(5, 0.04)

    result = fat_tail.backtest(realized, var, es, 0.99)

    assert result["n"] == 4
    assert result["exceptions"] == 2
    assert result["tail_loss"] == pytest.approx(0.08)
    assert result["es_coverage"] == pytest.approx(0.08 / 0.08)


def test_rolling_forecasts_when_returns_fat_tailed_then_fat_tail_methods_have_fewer_exceptions_than_normal():
    rng = np.random.default_rng(7)
    returns = 0.01 * rng.standard_t(3, size=(2400, 1)) / np.sqrt(3.0)
    returns[0] = np.nan

    forecasts = fat_tail.rolling_forecasts(returns, np.ones_like(returns))
    whole = fat_tail.evaluate(pd.bdate_range("2000-01-03", periods=2400), forecasts)["whole"]

    normal = whole["normal"]["exceptions"]
    for name in ("evt", "fhs_ewma", "historical"):
        assert whole[name]["exceptions"] < normal, name
    assert whole["normal"]["exceptions"] > whole["normal"]["expected"]


def test_rolling_forecasts_when_book_flat_then_no_forecast_and_realized_uses_next_return():
    returns = np.array([[np.nan], [0.01], [-0.02], [0.03]] * 100)
    weights = np.ones_like(returns)
    weights[300:] = 0.0

    forecasts = fat_tail.rolling_forecasts(returns, weights, window=50, history=60)

    assert np.isnan(forecasts["var"][:, :, 300:]).all()
    assert np.isfinite(forecasts["var"][0, 0, 60:300]).all()
    assert forecasts["realized"][10] == pytest.approx(returns[11, 0])


def test_sizing_method_when_orders_name_es_keys_then_most_frequent_method_returned():
    keys = ["evt_99", "evt_99", "student_t_975", "student_t_975", "student_t_975", ""]

    assert fat_tail.sizing_method(keys) == "student_t"
    assert fat_tail.sizing_method(["evt_99", "normal_99", "evt_99"]) == "evt"
    assert fat_tail.sizing_method([""]) is None


@pytest.mark.parametrize(("method", "passed"), [("evt", True), ("normal", False)])
def test_fat_tail_run_when_short_crisis_history_then_index_2008_red_and_sizing_judged(tmp_path: Path, method, passed):
    prices = load_sp500_prices("2005-01-01", "2009-12-31", ["AAPL", "JPM", "XOM", "KO", "GE"])
    index = load_sp500_index("2005-01-01", "2009-12-31")
    ctx = VerifyContext(target=StrategyTarget("qmp_lab.strategies.vol_target:VolatilityTarget"), out_dir=tmp_path,
                        quick=True, options={"prices": prices, "index_prices": index, "sizing_method": method})

    result = fat_tail.run(ctx)

    market_2008 = result.metrics["sp500"]["per_year"]["historical"][2008]
    assert market_2008["zone"] == "red"
    assert market_2008["exceptions"] >= 10
    assert set(result.metrics["sp500"]["whole"]) == set(METHOD_NAMES)
    sizing = next(c for c in result.checks if c.name == "position sizing uses a fat-tail ES")
    assert sizing.passed is passed
    assert (tmp_path / result.charts[0]).stat().st_size > 0

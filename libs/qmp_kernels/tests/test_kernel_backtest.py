"""VaR / ES backtests against scipy.stats and straightforward counting."""

import math

import numpy as np
import pytest
from scipy import stats

from qmp_core.config import RISK_DEFAULTS
from qmp_core.datasets import load_sp500_index
from qmp_kernels import status
from qmp_kernels.backtest import (
    BT_CC_LR,
    BT_CC_P,
    BT_EXCEPTIONS,
    BT_IND_LR,
    BT_IND_P,
    BT_KUPIEC_LR,
    BT_KUPIEC_P,
    BT_N,
    BT_Z2,
    BT_Z2_ZONE,
    BT_ZONE,
    ZONE_GREEN,
    ZONE_RED,
    ZONE_YELLOW,
    backtest_nb,
    traffic_light_nb,
)
from qmp_kernels.methods import rolling_var_es


def reference_lr(hits: np.ndarray, p: float) -> tuple[float, float]:
    """Kupiec and Christoffersen likelihood ratios from scipy's binomial / Bernoulli log-likelihoods."""
    n, x = len(hits), int(hits.sum())
    pof = -2 * (stats.binom.logpmf(x, n, p) - stats.binom.logpmf(x, n, x / n))
    previous, current = hits[:-1], hits[1:]
    counts = {(i, j): int(np.sum((previous == i) & (current == j))) for i in (0, 1) for j in (0, 1)}
    pi0 = counts[0, 1] / (counts[0, 0] + counts[0, 1])
    pi1 = counts[1, 1] / (counts[1, 0] + counts[1, 1]) if counts[1, 0] + counts[1, 1] else 0.0
    pi = (counts[0, 1] + counts[1, 1]) / (n - 1)
    restricted = stats.bernoulli.logpmf(current, pi).sum()
    unrestricted = (stats.bernoulli.logpmf(current[previous == 0], pi0).sum()
                    + stats.bernoulli.logpmf(current[previous == 1], pi1).sum())
    return pof, -2 * (restricted - unrestricted)


def test_backtest_when_sp500_rolling_normal_var_then_matches_scipy_likelihood_ratios() -> None:
    prices = load_sp500_index()["SP500"].to_numpy()
    returns = prices[1:] / prices[:-1] - 1.0
    x = returns[-1500:]
    var, es, _ = rolling_var_es(x, 250, 0.99, "normal", RISK_DEFAULTS.ewma_lambda, RISK_DEFAULTS.evt_threshold)
    realized, forecast, forecast_es = x[250:], var[249:-1], es[249:-1]
    out, code = backtest_nb(realized, forecast, forecast_es, 0.99)
    hits = (-realized > forecast).astype(int)
    pof, ind = reference_lr(hits, 0.01)
    assert code == status.OK
    assert out[BT_N] == len(realized) and out[BT_EXCEPTIONS] == hits.sum()
    assert out[BT_KUPIEC_LR] == pytest.approx(pof, rel=1e-10)
    assert out[BT_KUPIEC_P] == pytest.approx(stats.chi2.sf(pof, 1), rel=1e-9)
    assert out[BT_IND_LR] == pytest.approx(ind, rel=1e-9, abs=1e-12)
    assert out[BT_IND_P] == pytest.approx(stats.chi2.sf(ind, 1), rel=1e-9)
    assert out[BT_CC_LR] == pytest.approx(pof + ind, rel=1e-9)
    assert out[BT_CC_P] == pytest.approx(stats.chi2.sf(pof + ind, 2), rel=1e-9)
    z2 = np.sum(realized * hits / forecast_es) / (len(realized) * 0.01) + 1
    assert out[BT_Z2] == pytest.approx(z2, rel=1e-12)
    # 2017-2022 holds the Covid crash: a normal 99% VaR has too many exceptions there
    assert out[BT_EXCEPTIONS] > 2 * 0.01 * len(realized) and out[BT_KUPIEC_P] < 0.01


def test_traffic_light_when_250_days_at_99_then_basel_zones() -> None:
    zones = [traffic_light_nb(x, 250, 0.01) for x in range(15)]
    assert zones == [ZONE_GREEN] * 5 + [ZONE_YELLOW] * 5 + [ZONE_RED] * 5


def test_backtest_when_no_exception_then_green_and_full_p_values() -> None:
    realized = np.full(250, -0.001)
    out, code = backtest_nb(realized, np.full(250, 0.02), np.full(250, 0.03), 0.99)
    assert code == status.OK
    assert out[BT_EXCEPTIONS] == 0 and out[BT_ZONE] == ZONE_GREEN
    assert out[BT_KUPIEC_LR] == pytest.approx(-2 * 250 * math.log(0.99), rel=1e-12)
    assert out[BT_IND_LR] == 0.0 and out[BT_Z2] == pytest.approx(1.0)


def test_backtest_when_es_understates_the_tail_then_z2_red() -> None:
    realized = np.zeros(250)
    realized[::25] = -0.10  # 10 exceptions, each 5x the stated ES
    out, _ = backtest_nb(realized, np.full(250, 0.01), np.full(250, 0.02), 0.99)
    assert out[BT_EXCEPTIONS] == 10 and out[BT_ZONE] == ZONE_RED
    assert out[BT_Z2] == pytest.approx(-10 * 5 / 2.5 + 1) and out[BT_Z2_ZONE] == ZONE_RED


def test_backtest_when_clustered_exceptions_then_independence_rejected() -> None:
    realized = np.zeros(500)
    realized[200:206] = -0.05  # six exceptions in a row
    out, _ = backtest_nb(realized, np.full(500, 0.02), np.full(500, 0.03), 0.99)
    assert out[BT_IND_P] < 0.001


def test_backtest_when_nan_rows_or_empty_then_skipped_or_insufficient() -> None:
    realized = np.array([np.nan, -0.05, 0.01])
    out, code = backtest_nb(realized, np.array([0.02, np.nan, 0.02]), np.full(3, 0.03), 0.99)
    assert code == status.OK and out[BT_N] == 1
    _, code = backtest_nb(np.empty(0), np.empty(0), np.empty(0), 0.99)
    assert code == status.INSUFFICIENT_DATA
    _, code = backtest_nb(np.zeros(3), np.zeros(2), np.zeros(3), 0.99)
    assert code == status.INVALID_ARGUMENT

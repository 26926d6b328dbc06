"""Stress kernels and the Student-t table of the incremental engine."""

import math

import numpy as np
import pytest
from scipy import stats

from qmp_core.datasets import load_sp500_index
from qmp_kernels import status
from qmp_kernels.incremental import T_TABLE_NODES, t_table_lookup_nb, t_table_nb
from qmp_kernels.stress import (
    MC_A,
    MC_B,
    MC_FIELDS,
    MC_JUMP_INTENSITY,
    MC_NU,
    MC_OMEGA,
    MC_SIGMA2_0,
    calibrate_garch_t_jump_nb,
    garch_t_jump_max_drawdown_nb,
    path_max_drawdown_nb,
    worst_window_loss_nb,
)


def index_returns() -> np.ndarray:
    prices = load_sp500_index()["SP500"].to_numpy()
    return prices[1:] / prices[:-1] - 1.0


def test_path_max_drawdown_when_sp500_2008_then_matches_numpy_cummax() -> None:
    prices = load_sp500_index("2007-10-01", "2009-06-30")["SP500"].to_numpy()
    returns = prices[1:] / prices[:-1] - 1.0
    worst, total = path_max_drawdown_nb(returns)
    equity = prices / prices[0]
    assert worst == pytest.approx(np.max(1 - equity / np.maximum.accumulate(equity)), rel=1e-10)
    assert total == pytest.approx(equity[-1] - 1, rel=1e-10)
    assert worst > 0.5  # the index lost more than half from its October 2007 peak


def test_worst_window_loss_when_one_day_window_then_largest_one_day_loss() -> None:
    returns = index_returns()
    assert worst_window_loss_nb(returns[-3000:], 1) == pytest.approx(-returns[-3000:].min(), rel=1e-12)


def test_monte_carlo_when_same_seed_then_same_paths_and_other_seed_differs() -> None:
    params, code = calibrate_garch_t_jump_nb(index_returns()[-2520:])
    first, _, code1 = garch_t_jump_max_drawdown_nb(params, 252, 500, 11)
    second, _, _ = garch_t_jump_max_drawdown_nb(params, 252, 500, 11)
    other, _, _ = garch_t_jump_max_drawdown_nb(params, 252, 500, 12)
    assert code == status.OK and code1 == status.OK
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)
    assert 0.0 < np.percentile(first, 50) < np.percentile(first, 99) <= 1.0


def test_monte_carlo_when_iid_normal_then_drawdown_quantiles_match_numpy_simulation() -> None:
    params = np.zeros(MC_FIELDS)
    params[MC_NU] = math.inf
    params[MC_SIGMA2_0] = params[MC_OMEGA] = 0.01**2  # a = b = 0: sigma2 = omega every day, no jumps
    drawdowns, totals, code = garch_t_jump_max_drawdown_nb(params, 252, 20_000, 5)
    paths = 1 + np.random.default_rng(5).normal(0.0, 0.01, size=(20_000, 252))
    equity = np.cumprod(paths, axis=1)
    reference = np.max(1 - equity / np.maximum.accumulate(np.maximum(equity, 1.0), axis=1), axis=1)
    assert code == status.OK
    for q in (50, 95, 99):
        assert np.percentile(drawdowns, q) == pytest.approx(np.percentile(reference, q), rel=0.03)
    assert np.std(np.log1p(totals)) == pytest.approx(0.01 * math.sqrt(252), rel=0.03)


def test_calibration_when_simulated_garch_t_then_recovers_persistence_and_tail() -> None:
    rng = np.random.default_rng(2)
    omega, a, b, nu = 2e-6, 0.08, 0.9, 6.0
    n = 8000
    z = rng.standard_t(nu, n) * math.sqrt((nu - 2) / nu)
    x = np.empty(n)
    s2 = omega / (1 - a - b)
    for t in range(n):
        x[t] = math.sqrt(s2) * z[t]
        s2 = omega + a * x[t] ** 2 + b * s2
    params, code = calibrate_garch_t_jump_nb(x)
    assert code == status.OK
    assert params[MC_A] + params[MC_B] == pytest.approx(a + b, abs=0.02)
    assert params[MC_A] == pytest.approx(a, abs=0.03)
    assert 4.0 < params[MC_NU] < 12.0
    assert params[MC_OMEGA] > 0 and params[MC_JUMP_INTENSITY] < 0.01


def test_monte_carlo_when_bad_parameters_then_invalid_argument() -> None:
    params = np.zeros(MC_FIELDS)
    params[MC_A], params[MC_B], params[MC_NU] = 0.5, 0.6, 5.0
    assert garch_t_jump_max_drawdown_nb(params, 10, 10, 1)[2] == status.INVALID_ARGUMENT
    assert garch_t_jump_max_drawdown_nb(np.zeros(3), 10, 10, 1)[2] == status.INVALID_ARGUMENT
    assert calibrate_garch_t_jump_nb(np.zeros(5))[1] == status.INSUFFICIENT_DATA


def test_t_table_when_interpolated_then_matches_scipy_to_1e10() -> None:
    alphas = np.array([0.95, 0.975, 0.99])
    table = t_table_nb(alphas, T_TABLE_NODES)
    rng = np.random.default_rng(1)
    for nu in np.concatenate([[4.0, 4.001, 1e6], 4.0 + rng.exponential(8.0, 200)]):
        scale = math.sqrt((nu - 2) / nu)
        for level, alpha in enumerate(alphas):
            expected = scale * stats.t.ppf(alpha, nu)
            assert t_table_lookup_nb(table, level, 0, 1.0 / nu) == pytest.approx(expected, rel=1e-10), nu
    assert t_table_lookup_nb(table, 2, 0, 0.0) == pytest.approx(stats.norm.ppf(0.99), rel=1e-14)

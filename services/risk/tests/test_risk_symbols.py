"""SymbolRisk (incremental per-symbol kernel) against the point kernels and numpy on S&P 500 streams."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qmp_core.datasets import load_sp500_prices
from qmp_kernels import incremental as inc
from qmp_kernels import status
from qmp_kernels.methods import METHOD_NAMES, all_methods, method_index, var_es_methods_nb
from qmp_kernels.special import t_standardized_var_es_nb
from qmp_kernels.student_t import t_fit_nb
from qmp_risk.engine.symbols import SymbolParams, SymbolRisk

ALPHAS = (0.95, 0.975, 0.99)
NEVER = 10**9
SCHEDULED = ("fhs_garch", "student_t")  # fitted on the refit schedule, not on every batch
UNFITTED = [m for m, name in enumerate(METHOD_NAMES) if name not in SCHEDULED]


def params(window: int = 250, refit_every: int = NEVER, max_refits: int = 0) -> SymbolParams:
    return SymbolParams(window=window, alphas=ALPHAS, ewma_lambda=0.94, evt_threshold=0.9, vol_window=10,
                        vol_average_window=20, refit_every=refit_every, max_refits_per_batch=max_refits)


def stock_returns() -> np.ndarray:
    prices = load_sp500_prices().to_numpy()
    return prices[1:] / prices[:-1] - 1.0


def point(series: np.ndarray, window: int, garch: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    var, es, _, _ = var_es_methods_nb(np.ascontiguousarray(series), window, np.array(ALPHAS), 0.94, 0.9,
                                      np.full(3, np.nan) if garch is None else garch, all_methods())
    return var, es


def test_update_when_sp500_streams_then_every_method_equals_the_point_kernel_on_the_stream() -> None:
    returns = stock_returns()[:700]
    risk = SymbolRisk(params())
    cols = risk.columns([f"S{j}" for j in range(returns.shape[1])])
    for row in returns:
        risk.update(cols, row)
    for j in (0, 5, 19):
        var, es = point(returns[:, j], 250)
        np.testing.assert_allclose(risk.var[j, UNFITTED], var[UNFITTED], rtol=1e-10)
        np.testing.assert_allclose(risk.es[j, UNFITTED], es[UNFITTED], rtol=1e-10)
        assert risk.codes[j, method_index("fhs_garch")] == status.INSUFFICIENT_DATA  # waits for its fit
        # Until its first fit the t is the method-of-moments one: nu = 4 + 6 / K, scaled to the sample.
        window = returns[-250:, j]
        nu = 4.0 + 6.0 / stats.kurtosis(window)
        scale = window.std(ddof=1) * np.sqrt((nu - 2.0) / nu)
        t = method_index("student_t")
        assert risk.var[j, t, 2] == pytest.approx(-stats.t.ppf(0.01, nu, loc=window.mean(), scale=scale), rel=1e-7)


def test_refit_when_garch_fitted_then_equals_point_kernel_on_window_and_keeps_filtering_after() -> None:
    returns = stock_returns()[:800, 3]
    risk = SymbolRisk(params())
    cols = risk.columns(["X"])
    for r in returns[:600]:
        risk.update(cols, np.array([r]))
    assert risk.refit(np.array([0]))[0] == status.OK
    garch = method_index("fhs_garch")
    var, es = point(returns[350:600], 250)
    np.testing.assert_allclose(risk.var[0, garch], var[garch], rtol=1e-10)
    fitted = risk.floats[0, [inc.F_OMEGA, inc.F_A, inc.F_B]].copy()
    for r in returns[600:800]:
        risk.update(cols, np.array([r]))
    var, es = point(returns[350:800], 250, fitted)  # same parameters, filter continued from the refit
    np.testing.assert_allclose(risk.var[0, garch], var[garch], rtol=1e-10)
    np.testing.assert_allclose(risk.es[0, garch], es[garch], rtol=1e-10)


def test_refit_when_student_t_fitted_then_equals_point_kernel_and_moves_with_the_live_moments_after() -> None:
    returns = stock_returns()[:800, 3]
    risk = SymbolRisk(params())
    cols = risk.columns(["X"])
    for r in returns[:600]:
        risk.update(cols, np.array([r]))
    risk.refit(np.array([0]))
    t = method_index("student_t")
    window = returns[350:600]
    var, es = point(window, 250)
    np.testing.assert_allclose(risk.var[0, t], var[t], rtol=1e-7)  # the t table interpolates to ~3e-8
    np.testing.assert_allclose(risk.es[0, t], es[t], rtol=1e-7)
    mu, s, nu, _ = t_fit_nb(window)
    sd = s * np.sqrt(nu / (nu - 2))
    shift, ratio = mu - window.mean(), sd / window.std(ddof=1)
    for r in returns[600:700]:
        risk.update(cols, np.array([r]))
    live = returns[450:700]  # the same fitted shape, the live window's mean and standard deviation
    for level, alpha in enumerate(ALPHAS):
        q, e = t_standardized_var_es_nb(alpha, nu)
        expected_var = live.std(ddof=1) * ratio * q - (live.mean() + shift)
        expected_es = live.std(ddof=1) * ratio * e - (live.mean() + shift)
        assert risk.var[0, t, level] == pytest.approx(expected_var, rel=1e-7)
        assert risk.es[0, t, level] == pytest.approx(expected_es, rel=1e-7)


def test_update_when_realized_vol_then_matches_pandas_rolling_ratio() -> None:
    returns = stock_returns()[:300, 7]
    risk = SymbolRisk(params())
    cols = risk.columns(["V"])
    vol = pd.Series(returns).rolling(10).std()
    ratio = vol / vol.rolling(20).mean()
    for t, r in enumerate(returns):
        risk.update(cols, np.array([r]))
        if t in (8, 9, 28, 29, 150, 299):
            assert np.isnan(risk.vol[0, 0]) == np.isnan(vol.iloc[t])
            assert np.isnan(risk.vol[0, 1]) == np.isnan(ratio.iloc[t])
            if not np.isnan(ratio.iloc[t]):
                assert risk.vol[0] == pytest.approx([vol.iloc[t], ratio.iloc[t]], rel=1e-10)


def test_update_when_nan_returns_then_symbol_is_left_as_it_was() -> None:
    returns = np.ascontiguousarray(stock_returns()[:400, :2])
    gappy = SymbolRisk(params())
    clean = SymbolRisk(params())
    cols = gappy.columns(["A", "B"])
    clean.columns(["A", "B"])
    for t, row in enumerate(returns):
        holed = row.copy()
        if t % 7 == 3:
            holed[0] = np.nan
        gappy.update(cols, holed)
    clean_a = returns[np.arange(len(returns)) % 7 != 3, 0]
    for r in clean_a:
        clean.update(np.array([0]), np.array([r]))
    np.testing.assert_array_equal(gappy.var[0], clean.var[0])
    np.testing.assert_allclose(gappy.var[1, UNFITTED], point(returns[:, 1], 250)[0][UNFITTED], rtol=1e-10)


def test_update_when_fewer_returns_than_window_then_uses_what_there_is() -> None:
    returns = stock_returns()[:40, 2]
    risk = SymbolRisk(params())
    cols = risk.columns(["A"])
    for r in returns:
        risk.update(cols, np.array([r]))
    var, _ = point(returns, 250)
    assert risk.var[0, method_index("historical"), 2] == pytest.approx(-returns.min())
    moments = [method_index(name) for name in ("historical", "normal", "cornish_fisher", "fhs_ewma")]
    np.testing.assert_allclose(risk.var[0, moments], var[moments], rtol=1e-10)
    assert risk.codes[0, method_index("evt")] == status.INSUFFICIENT_DATA  # 4 peaks at a 90% threshold


def test_update_when_zero_variance_then_every_method_gives_the_constant_loss() -> None:
    risk = SymbolRisk(params(window=100))
    cols = risk.columns(["Z"])
    for _ in range(220):
        risk.update(cols, np.array([-0.001]))
    np.testing.assert_allclose(risk.var[0, UNFITTED], 0.001, rtol=1e-9)
    risk.refit(np.array([0]))
    assert risk.var[0, method_index("student_t")] == pytest.approx(0.001, rel=1e-9)  # a point mass
    assert risk.vol[0, 0] == 0.0 and np.isnan(risk.vol[0, 1])  # a flat series has no vol ratio


def test_update_when_1000_symbols_then_rows_match_point_kernels_and_grow_beyond_initial_capacity() -> None:
    rng = np.random.default_rng(4)
    returns = rng.standard_t(4, size=(300, 1000)) * 0.01
    risk = SymbolRisk(params(window=100))
    cols = risk.columns([f"S{j:04d}" for j in range(1000)])
    for row in returns:
        risk.update(cols, row)
    assert risk.symbols == 1000 and risk.ints.shape[0] >= 1000
    for j in (0, 63, 64, 999):
        var, es = point(returns[:, j], 100)
        np.testing.assert_allclose(risk.var[j, UNFITTED], var[UNFITTED], rtol=1e-10)
        np.testing.assert_allclose(risk.es[j, UNFITTED], es[UNFITTED], rtol=1e-10)
    top = risk.riskiest(3)
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]


def test_refit_schedule_when_many_symbols_then_capped_per_batch_and_longest_waiting_first() -> None:
    returns = np.random.default_rng(6).normal(0, 0.01, size=(80, 6))
    risk = SymbolRisk(params(window=60, refit_every=5, max_refits=2))
    cols = risk.columns([f"S{j}" for j in range(6)])
    for row in returns[:29]:
        risk.update(cols, row)
    assert risk.refits == 0  # fewer than 30 returns: nothing to fit
    risk.update(cols, returns[29])
    assert risk.refits == 2
    for row in returns[30:32]:
        risk.update(cols, row)
    assert risk.refits == 6 and (risk.last_refit[:6] > -1).all()
    assert np.isfinite(risk.var[:6, method_index("fhs_garch")]).all()


def test_on_closes_when_prices_arrive_then_returns_are_against_each_symbols_previous_close() -> None:
    risk = SymbolRisk(params(window=20))
    risk.on_closes(1, ["A", "B"], np.array([100.0, 50.0]), key="v")
    risk.on_closes(2, ["B", "A"], np.array([55.0, 99.0]), key="w")
    a = risk.column("A")
    b = risk.column("B")
    assert risk.rings[inc.RING_RAW, a, 0] == pytest.approx(-0.01)
    assert risk.rings[inc.RING_RAW, b, 0] == pytest.approx(0.10)
    assert risk.measures("A")["historical_99"] == pytest.approx(0.01)
    assert risk.measures("nope") == {}


def test_measures_when_es_left_out_then_the_same_var_keys_vol_and_ratio_without_any_es() -> None:
    risk = SymbolRisk(params(window=20))
    rng = np.random.default_rng(3)
    for t, price in enumerate(100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, 30)))):
        risk.on_closes(t + 1, ["A"], np.array([price]), key="v")

    full, lean = risk.measures("A"), risk.measures("A", with_es=False)

    assert any(key.startswith("es_") for key in full) and "vol" in full
    assert lean == {key: value for key, value in full.items() if not key.startswith("es_")}
    assert list(lean) == [key for key in full if not key.startswith("es_")]  # the same order

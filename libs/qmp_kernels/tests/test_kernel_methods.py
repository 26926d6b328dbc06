"""All methods at once, and the fast rolling historical kernel at scale, against independent references."""

import math

import numpy as np
import pandas as pd
import pytest

from qmp_core.config import RISK_DEFAULTS
from qmp_core.datasets import load_sp500_prices
from qmp_kernels import status
from qmp_kernels.evt import evt_var_es_nb
from qmp_kernels.fhs import MODEL_EWMA, MODEL_GARCH, fhs_var_es_nb, garch_fit_nb
from qmp_kernels.methods import (
    INFO_A,
    INFO_B,
    INFO_NU,
    INFO_OMEGA,
    METHOD_NAMES,
    N_METHODS,
    all_methods,
    level_key,
    method_index,
    rolling_var_es,
    var_es_methods_nb,
)
from qmp_kernels.student_t import t_fit_nb
from qmp_kernels.var import (
    cornish_fisher_var_es_nb,
    historical_var_es_nb,
    normal_var_es_nb,
    rolling_historical_var_es,
    student_t_var_es_nb,
)

ALPHAS = np.array([0.95, 0.975, 0.99])
NO_GARCH = np.full(3, np.nan)


def stock_returns() -> np.ndarray:
    """Column-major, so that one symbol's returns are contiguous (as the service's series are)."""
    prices = load_sp500_prices().to_numpy()
    return np.asfortranarray(prices[1:] / prices[:-1] - 1.0)


def test_var_es_methods_when_sp500_stock_then_each_method_matches_its_point_kernel() -> None:
    series = stock_returns()[-700:, 4]
    window = 250
    var, es, codes, info = var_es_methods_nb(series, window, ALPHAS, 0.94, 0.90, NO_GARCH, all_methods())
    assert (codes == status.OK).all()
    last = series[-window:]
    omega, a, b, _, _ = garch_fit_nb(series)
    assert (info[INFO_OMEGA], info[INFO_A], info[INFO_B]) == pytest.approx((omega, a, b))
    assert info[INFO_NU] == pytest.approx(t_fit_nb(last)[2], rel=1e-12)
    for level, alpha in enumerate(ALPHAS):
        expected = {
            "historical": historical_var_es_nb(last, alpha)[:2],
            "normal": normal_var_es_nb(last, alpha)[:2],
            "student_t": student_t_var_es_nb(last, alpha)[:2],
            "cornish_fisher": cornish_fisher_var_es_nb(last, alpha)[:2],
            "fhs_ewma": fhs_var_es_nb(series, window, alpha, MODEL_EWMA, 0.94, 0.0, 0.0, 0.0)[:2],
            "fhs_garch": fhs_var_es_nb(series, window, alpha, MODEL_GARCH, 0.0, omega, a, b)[:2],
            "evt": evt_var_es_nb(last, alpha, 0.90)[:2],
        }
        for name, (expected_var, expected_es) in expected.items():
            m = method_index(name)
            assert (var[m, level], es[m, level]) == pytest.approx((expected_var, expected_es), rel=1e-12), name
    # every method agrees on the order of magnitude of a 1% daily tail of one stock
    assert np.all((var[:, 2] > 0.01) & (var[:, 2] < 0.15))
    assert np.all(es[:, 2] >= var[:, 2] * 0.999)


def test_var_es_methods_when_mask_selects_one_method_then_others_stay_nan() -> None:
    mask = np.zeros(N_METHODS, dtype=np.bool_)
    mask[method_index("evt")] = True
    var, _, codes, _ = var_es_methods_nb(stock_returns()[-300:, 1], 250, ALPHAS, 0.94, 0.9, NO_GARCH, mask)
    assert np.isfinite(var[method_index("evt")]).all()
    assert np.isnan(np.delete(var, method_index("evt"), axis=0)).all()
    assert (codes == status.OK).all()


def test_var_es_methods_when_fewer_observations_than_window_then_uses_what_there_is_or_says_insufficient() -> None:
    x = stock_returns()[-25:, 0]
    var, _, codes, _ = var_es_methods_nb(x, 250, ALPHAS, 0.94, 0.9, NO_GARCH, all_methods())
    assert codes[method_index("historical")] == status.OK
    assert var[method_index("historical"), 2] == pytest.approx(-x.min())
    assert codes[method_index("fhs_garch")] == status.INSUFFICIENT_DATA  # below the 30 a GARCH fit needs
    assert codes[method_index("evt")] == status.INSUFFICIENT_DATA  # 2 peaks at a 90% threshold
    assert np.isnan(var[method_index("evt")]).all()


def test_var_es_methods_when_zero_variance_then_every_method_gives_minus_the_constant() -> None:
    x = np.full(300, -0.001)
    var, es, codes, _ = var_es_methods_nb(x, 250, ALPHAS, 0.94, 0.9, NO_GARCH, all_methods())
    assert (codes == status.OK).all(), codes
    for m in range(N_METHODS):
        if METHOD_NAMES[m].startswith("fhs"):
            # zero-mean filters: the residuals are all -1, scaled by the forecast sigma = 0.001
            np.testing.assert_allclose(var[m], 0.001, rtol=1e-9)
        else:
            np.testing.assert_allclose(var[m], 0.001, rtol=1e-9)
            np.testing.assert_allclose(es[m], 0.001, rtol=1e-9)


def test_var_es_methods_when_bad_arguments_then_invalid_for_every_method() -> None:
    x = stock_returns()[-300:, 0]
    for alphas, window in ((np.array([1.2]), 250), (ALPHAS, 1), (np.empty(0), 250)):
        _, _, codes, _ = var_es_methods_nb(x, window, alphas, 0.94, 0.9, NO_GARCH, all_methods())
        assert (codes == status.INVALID_ARGUMENT).all()


def test_level_key_and_method_index_when_named_then_stable_snapshot_keys() -> None:
    assert [level_key(a) for a in (0.95, 0.975, 0.99, 0.999)] == ["95", "975", "99", "999"]
    assert METHOD_NAMES[method_index("cornish_fisher")] == "cornish_fisher"
    with pytest.raises(ValueError, match="unknown method 'garch'"):
        method_index("garch")


def test_rolling_historical_when_1000_symbols_then_matches_pandas_rolling_quantile() -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_t(4, size=(320, 1000)) * 0.01
    x[rng.random(x.shape) < 0.01] = np.nan
    var, es, code = rolling_historical_var_es(x, 250, 0.99, min_periods=240)
    expected = -pd.DataFrame(x).rolling(250, min_periods=240).quantile(0.01, interpolation="lower").to_numpy()
    assert code == status.OK
    np.testing.assert_allclose(var, expected, rtol=0, atol=0)
    for column in (0, 499, 999):  # ES: the mean of the k + 1 smallest of each window
        for t in (239, 245, 250, 319):
            window = x[max(0, t - 249): t + 1, column]
            window = np.sort(window[np.isfinite(window)])
            if len(window) < 240:
                assert np.isnan(es[t, column])
                continue
            k = int(np.floor((len(window) - 1) * 0.01))
            assert es[t, column] == pytest.approx(-window[: k + 1].mean(), rel=1e-12)


def test_rolling_historical_when_single_symbol_and_several_levels_then_each_level_matches_numpy() -> None:
    x = stock_returns()[:, 5:6]
    for alpha in (0.95, 0.975, 0.99):
        var, es, _ = rolling_historical_var_es(x, 250, alpha)
        for t in (249, 1000, len(x) - 1):
            window = x[t - 249: t + 1, 0]
            assert var[t, 0] == pytest.approx(-np.quantile(window, 1 - alpha, method="lower"), rel=1e-15)
        assert np.isnan(var[:249]).all() and np.isnan(es[:249]).all()


def test_rolling_historical_when_fewer_rows_than_window_or_bad_level_then_nan() -> None:
    var, _, code = rolling_historical_var_es(np.full((10, 3), 0.01), 20, 0.99)
    assert code == status.OK and np.isnan(var).all()
    var, _, code = rolling_historical_var_es(np.zeros((30, 2)), 20, 1.5)
    assert code == status.INVALID_ARGUMENT and np.isnan(var).all()


@pytest.mark.parametrize("method", ["normal", "student_t", "evt", "fhs_ewma"])
def test_rolling_var_es_when_one_method_then_each_row_is_the_point_kernel_on_data_so_far(method: str) -> None:
    x = stock_returns()[-400:, 3]
    var, es, codes = rolling_var_es(x, 250, 0.99, method, RISK_DEFAULTS.ewma_lambda, RISK_DEFAULTS.evt_threshold)
    assert (codes[:249] == status.INSUFFICIENT_DATA).all() and np.isnan(var[:249]).all()
    mask = np.zeros(N_METHODS, dtype=np.bool_)
    mask[method_index(method)] = True
    for t in (249, 300, 399):
        expected, expected_es, _, _ = var_es_methods_nb(x[: t + 1], 250, np.array([0.99]), 0.94, 0.9, NO_GARCH, mask)
        assert var[t] == pytest.approx(expected[method_index(method), 0], rel=1e-12)
        assert es[t] == pytest.approx(expected_es[method_index(method), 0], rel=1e-12)
        assert codes[t] == status.OK
    assert math.isfinite(var[-1])

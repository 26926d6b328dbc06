"""Slippage models and their calibration: golden values of Almgren et al. (2005) and the square-root law."""

import itertools
import math

import numpy as np
import pytest

from qmp_core.messages import OrderAccepted
from qmp_execution.engine.slippage import SlippageConfig, SlippageModel
from qmp_kernels import impact
from qmp_kernels.status import INSUFFICIENT_DATA, INVALID_ARGUMENT, OK

ADV = 1_000_000.0
SIGMA = 0.02
TEMPORARY_ONLY = SlippageConfig(half_spread_bps=0.0, gamma=0.0)


@pytest.mark.parametrize("k", [2.0, 5.0, 10.0])
def test_cost_when_size_scaled_by_k_then_temporary_impact_scales_by_k_to_beta(k: float) -> None:
    model = SlippageModel(TEMPORARY_ONLY)

    ratio = model.cost(k * 10_000.0, SIGMA, ADV) / model.cost(10_000.0, SIGMA, ADV)

    assert ratio == pytest.approx(k**impact.BETA, rel=1e-12)


@pytest.mark.parametrize("config", [TEMPORARY_ONLY, SlippageConfig(half_spread_bps=0.0),
                                    SlippageConfig(model="sqrt", half_spread_bps=0.0)])
def test_cost_when_volatility_scaled_by_k_then_impact_scales_by_k(config: SlippageConfig) -> None:
    model = SlippageModel(config)

    assert model.cost(50_000.0, 3 * SIGMA, ADV) == pytest.approx(3 * model.cost(50_000.0, SIGMA, ADV), rel=1e-12)


def test_cost_when_almgren_defaults_then_matches_paper_formula() -> None:
    x, v, t, theta_over_v = 80_000.0, ADV, 0.5, 100.0
    model = SlippageModel(SlippageConfig(half_spread_bps=3.0, turnover_inverse=theta_over_v))

    temporary = 0.142 * SIGMA * (x / (v * t)) ** 0.600
    permanent = 0.314 * SIGMA * (x / v) ** 0.891 * theta_over_v**0.267
    expected = 3e-4 + temporary + permanent / 2

    assert model.cost(x, SIGMA, v, t) == pytest.approx(expected, rel=1e-12)


def test_cost_when_square_root_law_then_y_sigma_sqrt_participation() -> None:
    model = SlippageModel(SlippageConfig(model="sqrt", half_spread_bps=0.0, sqrt_y=1.0))

    assert model.cost(40_000.0, SIGMA, ADV) == pytest.approx(SIGMA * math.sqrt(0.04), rel=1e-12)


@pytest.mark.parametrize("model", ["almgren", "sqrt"])
def test_cost_when_size_goes_to_zero_then_half_spread(model: str) -> None:
    slippage = SlippageModel(SlippageConfig(model=model, half_spread_bps=2.5))  # type: ignore[arg-type]

    excess = [slippage.cost(q, SIGMA, ADV) - 2.5e-4 for q in (1e3, 1.0, 1e-3, 1e-12)]

    assert all(a > b > 0.0 for a, b in itertools.pairwise(excess))
    assert excess[-1] < 1e-10
    assert slippage.cost(0.0, SIGMA, ADV) == pytest.approx(2.5e-4, rel=1e-15)


def test_cost_when_fixed_model_then_same_bps_for_any_size() -> None:
    model = SlippageModel(SlippageConfig(model="fixed", fixed_bps=7.0))

    assert model.cost(1.0, SIGMA, ADV) == model.cost(500_000.0, 5 * SIGMA, ADV) == pytest.approx(7e-4)


def test_cost_when_volume_unknown_then_default_participation_used() -> None:
    model = SlippageModel(SlippageConfig(model="sqrt", half_spread_bps=0.0, unknown_participation=0.01))

    assert model.cost(123.0, SIGMA, math.nan) == pytest.approx(SIGMA * math.sqrt(0.01), rel=1e-12)


def test_cost_when_huge_order_then_clipped_at_max() -> None:
    model = SlippageModel(SlippageConfig(max_slippage_bps=50.0))

    assert model.cost(50 * ADV, 0.1, ADV) == pytest.approx(50e-4)


def test_costs_when_noise_seeded_then_reproducible_and_mean_preserving() -> None:
    quantity = np.full(20_000, 50_000.0)
    sigma, adv, days = np.full(20_000, SIGMA), np.full(20_000, ADV), np.ones(20_000)
    plain = SlippageModel(SlippageConfig(half_spread_bps=0.0)).costs(quantity, sigma, adv, days)[0]
    noisy = SlippageModel(SlippageConfig(half_spread_bps=0.0, noise_scale=0.3, seed=7))

    first = noisy.costs(quantity, sigma, adv, days, noise_key=11)[0]
    again = noisy.costs(quantity, sigma, adv, days, noise_key=11)[0]
    other = noisy.costs(quantity, sigma, adv, days, noise_key=12)[0]

    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.std() > 0
    assert first.mean() == pytest.approx(plain[0], rel=0.02)


def test_fit_when_records_from_known_model_with_noise_then_coefficients_recovered() -> None:
    rng = np.random.default_rng(3)
    n = 4_000
    quantity = rng.uniform(1e3, 2e5, n)
    sigma = rng.uniform(0.01, 0.04, n)
    truth = SlippageModel(SlippageConfig(half_spread_bps=1.5, eta=0.2, beta=0.7, gamma=0.0, noise_scale=0.2))
    cost, rate = truth.costs(quantity, sigma, np.full(n, ADV), np.ones(n), noise_key=1)

    spread, eta, beta, r2, used, code = impact.fit_impact_nb(cost, sigma, rate, np.zeros(n), 0.2, 1.2, True, 0.0)

    assert code == OK and used == n
    assert spread == pytest.approx(1.5e-4, rel=0.15)
    assert eta == pytest.approx(0.2, rel=0.1)
    assert beta == pytest.approx(0.7, abs=0.05)
    assert 0.5 < r2 <= 1.0


def test_fit_when_spread_held_and_no_noise_then_exact() -> None:
    rate = np.geomspace(1e-4, 0.3, 50)
    sigma = np.full(50, SIGMA)
    cost = 2e-4 + 0.142 * SIGMA * rate**0.6

    spread, eta, beta, r2, _, code = impact.fit_impact_nb(cost, sigma, rate, np.zeros(50), 0.3, 0.9, False, 2e-4)

    assert code == OK and spread == 2e-4
    assert eta == pytest.approx(0.142, rel=1e-4) and beta == pytest.approx(0.6, abs=1e-4)
    assert r2 == pytest.approx(1.0, abs=1e-9)


def test_fit_when_too_few_records_or_bad_bounds_then_status_not_ok() -> None:
    two = np.array([1e-4, 2e-4])

    assert impact.fit_impact_nb(two, two, two, np.zeros(2), 0.2, 1.0, True, 0.0)[-1] == INSUFFICIENT_DATA
    assert impact.fit_impact_nb(two, two, two, np.zeros(2), 1.0, 0.2, True, 0.0)[-1] == INVALID_ARGUMENT


def test_kernel_when_parameters_invalid_then_status_and_nan_not_exception() -> None:
    one = np.ones(1)

    cost, _, code = impact.impact_cost_nb(one, one, one, one, 0.0, 0.1, -1.0, 0.0, 1.0, 0.3, 100.0, 0.01, 1.0,
                                          np.empty(0), 0.0)

    assert code == INVALID_ARGUMENT and np.isnan(cost).all()


def test_order_accepted_when_encoded_then_reason_round_trips() -> None:
    order = OrderAccepted(strategy="s", order_id="o", symbol="A", side="BUY", quantity=1.0, price=1.0, ts_event=1,
                          reason="capped by participation_limit")

    assert "participation_limit" in order.reason

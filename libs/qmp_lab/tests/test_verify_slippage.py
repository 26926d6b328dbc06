"""slippage: the calibrated dynamic model recovers the stated process and beats the fixed model in volatile markets."""

from pathlib import Path

import numpy as np
import pytest

from qmp_kernels import impact
from qmp_lab.verify import slippage
from qmp_lab.verify.core import StrategyTarget, VerifyContext


def test_slippage_run_when_default_process_then_passes_with_enough_orders_per_bin(tmp_path: Path):
    ctx = VerifyContext(target=StrategyTarget("qmp_lab.strategies.vol_target:VolatilityTarget"), out_dir=tmp_path,
                        options={"orders_per_bin": 700})

    result = slippage.run(ctx)

    assert result.status == "pass", [c.detail for c in result.checks if c.passed is False]
    assert min(min(row) for row in result.metrics["orders_per_bin"]) >= slippage.MIN_ORDERS_PER_BIN
    top = result.metrics["quintiles"][-1]
    assert top["low"] <= top["ratio"] <= top["high"]
    assert top["ratio"] <= result.metrics["oracle_top_ratio"] * 1.02


def test_fit_dynamic_when_orders_from_known_process_then_recovers_its_coefficients():
    orders = slippage.synthetic_orders(np.random.default_rng(9), 20_000)

    fitted = slippage.fit_dynamic(orders)

    assert fitted["beta"] == pytest.approx(impact.BETA, abs=0.08)
    assert fitted["eta"] == pytest.approx(impact.ETA, rel=0.25)
    assert fitted["half_spread"] == pytest.approx(slippage.HALF_SPREAD, abs=0.5e-4)


def test_scaling_properties_when_beta_larger_then_size_exponent_larger_and_volatility_stays_linear():
    low = slippage.scaling_properties({"half_spread": 2e-4, "eta": 0.2, "beta": 0.4})
    high = slippage.scaling_properties({"half_spread": 2e-4, "eta": 0.2, "beta": 0.9})

    assert low["size_exponent"] < high["size_exponent"]
    assert low["volatility_linearity_error"] < 1e-9
    assert low["asymmetry"] == 0.0
    assert low["zero_order_cost_bps"] == pytest.approx(2.0)


def test_mae_ratio_when_fixed_errors_double_then_ratio_two_inside_its_interval():
    rng = np.random.default_rng(2)
    dynamic_error = np.abs(rng.normal(0.0, 1.0, 3000))

    result = slippage.mae_ratio(2.0 * dynamic_error, dynamic_error, rng, resamples=500)

    assert result["ratio"] == pytest.approx(2.0)
    assert result["low"] <= 2.0 <= result["high"]

"""walk_forward: planted leaks are caught, clean strategies pass, purged splits never leak labels."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qmp_core.datasets import load_sp500_prices
from qmp_lab.verify import walk_forward
from qmp_lab.verify.core import StrategyTarget, VerifyContext

SYMBOLS = ["AAPL", "AMD", "BAC", "CVX", "GE", "JPM", "KO", "XOM"]
LEAKS = ["NextDayReturn", "CentredMean", "FullSampleZScore", "BackFilled"]


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    return load_sp500_prices("2006-07-01", "2007-12-31", SYMBOLS)


def context(tmp_path: Path, path: str, prices: pd.DataFrame, **options) -> VerifyContext:
    return VerifyContext(target=StrategyTarget(path), out_dir=tmp_path, quick=True,
                         options={"prices": prices, "perturbation_cuts": 20} | options)


def check(result, name: str):
    return next(c for c in result.checks if c.name == name)


@pytest.mark.parametrize("leak", LEAKS)
def test_walk_forward_when_leak_planted_then_both_checks_catch_it(tmp_path, prices, leak):
    result = walk_forward.run(context(tmp_path, f"leaky_strategies:{leak}", prices))

    assert result.status == "fail"
    assert check(result, "truncation invariance at every bar").passed is False
    assert check(result, "future perturbation sweep").passed is False
    assert result.metrics["truncation"]["leaks"] > 0


@pytest.mark.parametrize("path", ["leaky_strategies:CleanMomentum",
                                  "qmp_lab.strategies.vol_target:VolatilityTarget"])
def test_walk_forward_when_strategy_clean_then_passes_with_report(tmp_path, prices, path):
    result = walk_forward.run(context(tmp_path, path, prices))

    assert result.status == "pass", [c.detail for c in result.checks]
    assert result.metrics["truncation"]["rows_checked"] == len(prices)
    assert len(result.metrics["fold_sharpe"]) == result.metrics["folds"]
    assert 0.0 <= result.metrics["dsr"]["dsr"] <= 1.0
    assert (tmp_path / result.charts[0]).stat().st_size > 0


def test_truncation_check_when_back_fill_and_no_gaps_then_only_planted_gaps_reveal_it(prices):
    strategy = StrategyTarget("leaky_strategies:BackFilled").build()
    clean = walk_forward.truncation_check(strategy, prices, walk_forward.weights_array(strategy, prices))
    gapped, gaps = walk_forward.planted_gaps(prices, np.random.default_rng(3))
    found = walk_forward.truncation_check(strategy, gapped, walk_forward.weights_array(strategy, gapped))

    assert clean["leaks"] == []
    assert found["leaks"], "a back fill must show at the rows before a gap ends"
    leak_rows = {leak.row for leak in found["leaks"]}
    rows_with_gaps = set(np.flatnonzero(gapped.isna().any(axis=1).to_numpy()).tolist())
    assert leak_rows <= rows_with_gaps
    assert gaps["late_listed"] and gaps["missing_closes"] > 0


def test_walk_forward_when_strategy_fits_then_purged_splits_pass_and_fold_sharpes_reported(tmp_path, prices):
    result = walk_forward.run(context(tmp_path, "leaky_strategies:FittedMomentum", prices, folds=4,
                                      cpcv_groups=4, cpcv_test_groups=2))

    assert result.status == "pass", [c.detail for c in result.checks]
    assert result.metrics["fits"] is True
    assert result.metrics["purge_violations"] == 0
    assert check(result, "purged splits: no training label interval meets a test interval").passed is True
    fold_rows = result.tables[0].rows
    assert len(fold_rows) == 3 + math.comb(4, 2)


def test_assert_purged_when_label_interval_reaches_test_then_raises():
    test = np.arange(50, 60)
    with pytest.raises(walk_forward.LookAheadInSplit):
        walk_forward.assert_purged(np.arange(0, 50), test, 100, horizon=1)
    walk_forward.assert_purged(np.arange(0, 49), test, 100, horizon=1)


@pytest.mark.parametrize(("horizon", "embargo"), [(1, 0), (5, 3), (10, 20)])
def test_cpcv_splits_when_purged_with_embargo_then_no_label_meets_test_and_embargo_is_empty(horizon, embargo):
    n = 600
    for _, train, test in walk_forward.cpcv_splits(n, 6, 2, horizon, embargo):
        walk_forward.assert_purged(train, test, n, horizon)
        test_mask = np.zeros(n, dtype=bool)
        test_mask[test] = True
        ends = np.flatnonzero(test_mask[:-1] & ~test_mask[1:]) + 1
        for end in ends:
            assert not np.isin(np.arange(end, min(n, end + embargo)), train).any()
    for train, test in walk_forward.walk_forward_splits(n, 5, horizon, embargo):
        walk_forward.assert_purged(train, test, n, horizon)
        assert train.max() < test.min()


def test_probability_of_overfitting_when_configs_are_noise_then_near_half_and_when_one_dominates_then_zero():
    rng = np.random.default_rng(11)
    noise = [rng.normal(0.0, 0.01, size=(800, 12)) for _ in range(12)]
    dominant = noise[0].copy()
    dominant[:, 5] += 0.01

    mean_pbo = np.mean([walk_forward.probability_of_overfitting(m, blocks=8)["pbo"] for m in noise])
    assert 0.35 < mean_pbo < 0.65
    assert walk_forward.probability_of_overfitting(dominant)["pbo"] == 0.0


def test_deflated_sharpe_when_more_configurations_tried_then_lower():
    rng = np.random.default_rng(5)
    returns = rng.normal(0.0004, 0.01, size=2000)
    trial_sharpes = rng.normal(0.0, 0.02, size=20)

    one = walk_forward.deflated_sharpe(returns, trial_sharpes, trials=1)
    many = walk_forward.deflated_sharpe(returns, trial_sharpes, trials=200)

    assert one["sr0"] == 0.0
    assert many["sr0"] > 0.0
    assert many["dsr"] < one["dsr"]


def test_perturb_after_when_cut_given_then_rows_up_to_cut_untouched(prices):
    rng = np.random.default_rng(0)
    for kind in walk_forward.PERTURBATIONS:
        moved = walk_forward.perturb_after(prices, 100, kind, rng)
        pd.testing.assert_frame_equal(moved.iloc[:101], prices.iloc[:101])
        assert not np.allclose(moved.iloc[101:].fillna(-1).to_numpy(), prices.iloc[101:].to_numpy())


def test_walk_forward_when_constructor_takes_no_config_then_verified_not_crashed(tmp_path, prices):
    # issue 11 #7: a strategy built with `Class()` crashed with "need at least one array to concatenate".
    result = walk_forward.run(context(tmp_path, "leaky_strategies:NoConfigMomentum", prices))

    assert result.status == "pass", result.summary
    assert result.metrics["configurations"] == [{}]

"""Budgets across strategies (skfolio's optimisers): risk parity on ES evens the strategies' ES contributions, the
least-ES proposal takes the least ES, every proposal keeps its bounds and sums to one, and what cannot carry a
proposal is said."""

import numpy as np
import pandas as pd
import pytest

from qmp_lab.portfolio import METHODS, STRESS_KINDS, PortfolioError, out_of_sample, propose, scenario_plan

VOLS = np.array([0.004, 0.01, 0.025])  # a calm, a middling and a wild strategy


def returns(days: int = 750, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    common = rng.standard_t(4, size=(days, 1)) * 0.5
    shocks = (rng.standard_t(4, size=(days, 3)) + common) * VOLS
    return pd.DataFrame(shocks + 0.0003, columns=["calm", "middle", "wild"],
                        index=pd.bdate_range("2021-01-04", periods=days))


def test_propose_when_strategies_differ_in_risk_then_each_method_budgets_by_its_rule() -> None:
    proposals = {p.method: p for p in propose(returns(), min_weight=0.05, max_weight=0.8)}

    assert list(proposals) == list(METHODS)
    for p in proposals.values():
        assert sum(p.weights.values()) == pytest.approx(1.0, abs=1e-6)
        assert all(0.05 - 1e-6 <= w <= 0.8 + 1e-6 for w in p.weights.values()) or p.method == "equal"
        assert p.es > 0 and sum(p.es_contributions.values()) == pytest.approx(p.es, rel=0.1)
    parity = proposals["es_risk_parity"]
    assert parity.weights["calm"] > parity.weights["middle"] > parity.weights["wild"]
    shares = np.array(list(parity.es_contributions.values()))
    assert shares.max() / shares.min() < 1.6  # about the same ES from each (a 99% tail of 750 days is coarse)
    assert proposals["equal"].weights == pytest.approx({"calm": 1 / 3, "middle": 1 / 3, "wild": 1 / 3})
    # the least ES is the least ES: no other proposal's portfolio loses less in its 1% tail
    assert proposals["mean_cvar"].es <= min(p.es for p in proposals.values()) + 1e-9
    assert proposals["equal"].es > parity.es  # an equal budget lets the wild strategy carry the tail


def test_propose_when_turnover_capped_then_the_least_es_moves_at_most_that_far() -> None:
    current = {"calm": 0.2, "middle": 0.4, "wild": 0.4}

    (capped,) = propose(returns(), methods=("mean_cvar",), previous=current, max_turnover=0.1)
    (free,) = propose(returns(), methods=("mean_cvar",))

    assert max(abs(capped.weights[k] - current[k]) for k in current) <= 0.1 + 1e-6  # per strategy, as skfolio
    assert max(abs(free.weights[k] - current[k]) for k in current) > 0.1  # the cap is what held it


def test_propose_when_returns_cannot_carry_a_proposal_then_says_why() -> None:
    with pytest.raises(PortfolioError, match="60 needed"):
        propose(returns(days=40))
    with pytest.raises(PortfolioError, match="at least two"):
        propose(returns()[["calm"]])
    with pytest.raises(PortfolioError, match="cannot hold"):
        propose(returns(), max_weight=0.2)  # three budgets of at most 20% never sum to one
    with pytest.raises(PortfolioError, match="unknown method"):
        propose(returns(), methods=("kelly",))


def test_out_of_sample_when_run_twice_then_the_same_outcomes_and_stress_hurts_more_than_bootstrap() -> None:
    recorded = returns()
    proposals = propose(recorded, methods=("es_risk_parity", "equal"), min_weight=0.05, max_weight=0.8)

    first = out_of_sample(recorded, proposals, count=40, seed=11)
    again = out_of_sample(recorded, proposals, count=40, seed=11)
    other = out_of_sample(recorded, proposals, count=40, seed=12)

    assert first == again and first != other
    plan = scenario_plan(40)
    assert [s.kind for s in plan].count("bootstrap") == 24 and {s.kind for s in plan} == {"bootstrap", *STRESS_KINDS}
    mean = {kind: np.mean([o.max_drawdown for o in first if o.scenario.kind == kind and o.method == "equal"])
            for kind in ("bootstrap", "vol_x3", "crisis_2008")}
    assert mean["vol_x3"] > mean["bootstrap"] and mean["crisis_2008"] > mean["bootstrap"]

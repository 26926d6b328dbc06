"""Budgets across strategies from their daily returns: what `qmp portfolio optimise` proposes.

Four methods, each skfolio's (a portfolio library's optimisers, not hand-written ones), with the same bounds on
every strategy's weight (`min_weight`, `max_weight`, the weights summing to 1):
- `es_risk_parity`: risk budgeting on Expected Shortfall (CVaR at `level`): each strategy contributes the same ES;
- `hrp`: hierarchical risk parity on ES (a clustering of the strategies' correlations, then recursive bisection;
  skfolio weighs its clusters by their CVaR at its own level, 95%);
- `mean_cvar`: the least ES with the bounds (and, given the current weights, at most `max_turnover` of change
  in each strategy's);
- `equal`: 1/N, the baseline every other is measured against.
Each proposal comes with the portfolio's in-sample daily ES at `level` and every strategy's share of it (its ES
contribution), so a budget is judged by the risk it takes, not only by its weights.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

METHODS = ("es_risk_parity", "hrp", "mean_cvar", "equal")
LEVEL = 0.99
MIN_DAYS = 60  # fewer common days of returns say nothing about a tail at 99%
BOUND_TOLERANCE = 1e-6


class PortfolioError(ValueError):
    """The returns cannot carry a proposal (too few days, a single strategy, bounds that cannot hold)."""


@dataclass(frozen=True)
class Proposal:
    method: str
    weights: dict[str, float]
    es: float  # the portfolio's daily ES at the level, in-sample (a positive loss)
    es_contributions: dict[str, float]  # each strategy's share of `es` (summing to it)


def _model(method: str, n: int, min_weight: float, max_weight: float, level: float,
           previous: np.ndarray | None, max_turnover: float | None) -> Any:
    from skfolio import RiskMeasure
    from skfolio.optimization import (
        EqualWeighted,
        HierarchicalRiskParity,
        MeanRisk,
        ObjectiveFunction,
        RiskBudgeting,
    )

    # Every proposal's portfolio is measured at `level` (predict builds it with these parameters).
    bounds = {"min_weights": min_weight, "max_weights": max_weight, "portfolio_params": {"cvar_beta": level}}
    if method == "es_risk_parity":
        # Clarabel was seen to fail on a bounded CVaR budgeting that its bounds do not even bind (750 days, 99%,
        # [0.05, 0.8]): skfolio then tries the same problem with fewer bounds, and `propose` checks the answer
        # keeps them.
        looser = [RiskBudgeting(risk_measure=RiskMeasure.CVAR, cvar_beta=level, min_weights=0.0,
                                max_weights=hi, portfolio_params=bounds["portfolio_params"])
                  for hi in (max_weight, 1.0)]
        return RiskBudgeting(risk_measure=RiskMeasure.CVAR, cvar_beta=level, fallback=looser, **bounds)
    if method == "hrp":
        return HierarchicalRiskParity(risk_measure=RiskMeasure.CVAR, **bounds)
    if method == "mean_cvar":
        turnover = {} if previous is None or max_turnover is None else {
            "previous_weights": previous, "max_turnover": max_turnover}
        return MeanRisk(objective_function=ObjectiveFunction.MINIMIZE_RISK, risk_measure=RiskMeasure.CVAR,
                        cvar_beta=level, **bounds, **turnover)
    if method == "equal":
        return EqualWeighted(portfolio_params={"cvar_beta": level})
    raise PortfolioError(f"unknown method {method!r}: one of {', '.join(METHODS)}")


def propose(returns: pd.DataFrame, methods: tuple[str, ...] = METHODS, min_weight: float = 0.0,
            max_weight: float = 1.0, level: float = LEVEL, previous: dict[str, float] | None = None,
            max_turnover: float | None = None) -> list[Proposal]:
    """One proposal per method from `returns` (days × strategies, simple daily returns, no gaps)."""
    try:
        from skfolio import RiskMeasure
    except ImportError as error:
        raise PortfolioError("budgets need skfolio: pip install 'qmp-lab[portfolio]'") from error

    clean = returns.dropna()
    names = [str(c) for c in clean.columns]
    if len(names) < 2:
        raise PortfolioError("a portfolio needs at least two strategies")
    if len(clean) < MIN_DAYS:
        raise PortfolioError(f"{len(clean)} days with a return of every strategy: {MIN_DAYS} needed")
    if not (0.0 <= min_weight <= 1.0 / len(names) <= max_weight <= 1.0):
        raise PortfolioError(f"bounds [{min_weight}, {max_weight}] cannot hold {len(names)} weights summing to 1")
    before = None if previous is None else np.array([previous.get(name, 0.0) for name in names])
    proposals = []
    for method in methods:
        model = _model(method, len(names), min_weight, max_weight, level, before, max_turnover)
        model.fit(clean)
        weights = np.asarray(model.weights_, dtype=np.float64)
        if method != "equal" and not ((weights >= min_weight - BOUND_TOLERANCE).all()
                                      and (weights <= max_weight + BOUND_TOLERANCE).all()):
            raise PortfolioError(f"{method}: the optimiser found no budgets within [{min_weight}, {max_weight}] "
                                 f"(it gave {np.round(weights, 4).tolist()})")
        portfolio = model.predict(clean)
        contributions = np.asarray(portfolio.contribution(measure=RiskMeasure.CVAR), dtype=np.float64)
        proposals.append(Proposal(method=method, weights=dict(zip(names, weights.tolist(), strict=True)),
                                  es=float(portfolio.cvar),
                                  es_contributions=dict(zip(names, contributions.tolist(), strict=True))))
    return proposals

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


# ---------------------------------------------------------------- proposals out of sample: `qmp portfolio test`
SCENARIO_DAYS = 252
MEAN_BLOCK_DAYS = 10  # stationary block bootstrap: runs of days kept together (their volatility clustering)
STRESS_KINDS = ("vol_x3", "corr_0.9", "crisis_2008", "crisis_2020")


@dataclass(frozen=True)
class Scenario:
    kind: str  # bootstrap, or one of STRESS_KINDS
    index: int  # its seed stream: the same index gives the same path


@dataclass(frozen=True)
class Outcome:
    """One proposal over one scenario: its daily ES at the level, maximum drawdown and the breakers it trips."""

    scenario: Scenario
    method: str
    es: float
    max_drawdown: float
    drawdown_halt: bool  # a day's loss beyond the risk service's drawdown halt
    volatility: bool  # its volatility ratio beyond the risk service's limit (order size cut)


def scenario_plan(count: int) -> list[Scenario]:
    """`count` scenarios: a tenth of each stress kind (at least one), the rest bootstrapped."""
    stressed = max(1, count // 10)
    kinds = [kind for kind in STRESS_KINDS for _ in range(stressed)]
    kinds = ["bootstrap"] * max(0, count - len(kinds)) + kinds
    return [Scenario(kind, index) for index, kind in enumerate(kinds[:count])]


def crisis_factors() -> dict[str, np.ndarray]:
    """The S&P 500 index's daily returns over each crisis episode, over the index's own daily volatility: the
    market's move in units of its volatility, which a scenario scales to each strategy's."""
    from qmp_core.datasets import load_sp500_index
    from qmp_lab.scenarios import EPISODES

    index = load_sp500_index().iloc[:, 0]
    daily = index.pct_change().dropna()
    vol = float(daily.std())
    factors = {}
    for name, episode in zip(("crisis_2008", "crisis_2020"), EPISODES, strict=True):
        window = daily[(daily.index >= episode.start) & (daily.index <= episode.end)]
        factors[name] = window.to_numpy() / vol
    return factors


def scenario_returns(returns: np.ndarray, scenario: Scenario, seed: int, factors: dict[str, np.ndarray]
                     ) -> np.ndarray:
    """One scenario's SCENARIO_DAYS × strategies of daily returns, from the recorded ones.

    bootstrap: a stationary block bootstrap. vol_x3: that, with every strategy's moves around its mean tripled.
    corr_0.9: that, re-correlated to 0.9 between every pair (each volatility kept). crisis_<year>: that, with
    the crisis's market moves added at its start, each strategy moving with the market at its own volatility
    (the worst case of a strategy wholly exposed to the market)."""
    rng = np.random.default_rng([seed, scenario.index])
    n = len(returns)
    rows = np.empty(SCENARIO_DAYS, dtype=np.int64)
    row = int(rng.integers(n))
    for t in range(SCENARIO_DAYS):
        row = int(rng.integers(n)) if rng.random() < 1.0 / MEAN_BLOCK_DAYS else (row + 1) % n
        rows[t] = row
    path = returns[rows]
    if scenario.kind == "vol_x3":
        mean = returns.mean(axis=0)
        return mean + 3.0 * (path - mean)
    if scenario.kind == "corr_0.9":
        from qmp_lab.scenarios import recorrelate

        return recorrelate(path, 0.9)
    if scenario.kind in factors:
        factor = factors[scenario.kind][:SCENARIO_DAYS]
        shocked = path.copy()
        shocked[:len(factor)] += np.outer(factor, returns.std(axis=0, ddof=1))
        return shocked
    return path


def evaluate(shared: tuple[np.ndarray, dict[str, np.ndarray], int, dict[str, np.ndarray], float],
             scenario: Scenario) -> list[Outcome]:
    """Every proposal over one scenario (a piece `run_tasks` runs): shared = (recorded returns, method →
    weights, seed, crisis factors, level)."""
    from qmp_core.breakers import drawdown_trips, volatility_trips
    from qmp_core.config import RISK_DEFAULTS
    from qmp_kernels.stress import path_max_drawdown_nb
    from qmp_kernels.vol import vol_ratio_1d_nb

    returns, weights, seed, factors, level = shared
    path = scenario_returns(returns, scenario, seed, factors)
    outcomes = []
    for method, w in weights.items():
        daily = np.ascontiguousarray(path @ w)
        losses = np.sort(-daily)[::-1]
        tail = max(1, int(np.ceil((1.0 - level) * len(daily))))
        drawdown, _ = path_max_drawdown_nb(daily)
        ratio, _ = vol_ratio_1d_nb(daily, RISK_DEFAULTS.vol_window, RISK_DEFAULTS.vol_average_window)
        peak_ratio = float(np.nanmax(ratio)) if np.isfinite(ratio).any() else 0.0
        outcomes.append(Outcome(scenario=scenario, method=method, es=float(losses[:tail].mean()),
                                max_drawdown=float(drawdown),
                                drawdown_halt=drawdown_trips(float(losses[0]), RISK_DEFAULTS.drawdown_halt),
                                volatility=volatility_trips(peak_ratio, RISK_DEFAULTS.vol_ratio_limit)))
    return outcomes


def out_of_sample(returns: pd.DataFrame, proposals: list[Proposal], count: int = 100, seed: int = 7,
                   workers: Any = None, progress: Any = None, level: float = LEVEL) -> list[Outcome]:
    """Every proposal over `count` scenarios made from `returns` (bootstrapped and stressed); each scenario is
    an independent piece, run in this process or on Ray (`workers`), with the same numbers either way."""
    from qmp_lab.parallel import IN_PROCESS, run_tasks

    columns = [str(c) for c in returns.columns]
    weights = {p.method: np.array([p.weights[c] for c in columns]) for p in proposals}
    shared = (returns.dropna().to_numpy(dtype=np.float64), weights, seed, crisis_factors(), level)
    per_scenario = run_tasks(evaluate, shared, scenario_plan(count), workers or IN_PROCESS, progress)
    return [outcome for outcomes in per_scenario for outcome in outcomes]


"""`qmp sweep`: a strategy over a grid of parameter sets, each its own backtest on the same history.

Every configuration of the grid's product (the strategy's own config first; sets it refuses are left out, as
walk_forward's grid does) is built fresh, fitted on the first third when it fits, and held over the whole
history with the verification suite's return rule (`portfolio_returns`: row t's weights from close t to t + 1).
Each set is an independent piece (`qmp_lab.parallel.run_tasks`): in this process or as Ray tasks, with the
same numbers either way. A row per set: annual return and volatility, Sharpe, maximum drawdown.
"""

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qmp_lab.parallel import IN_PROCESS, Workers, run_tasks
from qmp_lab.verify.core import TRADING_DAYS, StrategyTarget, max_drawdown, sharpe
from qmp_lab.verify.walk_forward import config_dict, config_grid, config_returns

MAX_SETS = 10_000


@dataclass(frozen=True)
class SweepRow:
    config: dict[str, Any]
    annual_return: float
    annual_volatility: float
    sharpe: float
    max_drawdown: float


def read_grid(path: Path) -> dict[str, list[Any]]:
    """A TOML grid: each setting a list of values (`lookback = [20, 60, 120]`); ValueError saying what is wrong."""
    try:
        grid = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"cannot read the grid {path}: {error}") from error
    wrong = [name for name, values in grid.items() if not isinstance(values, list) or not values]
    if wrong or not grid:
        raise ValueError(f"{path}: every setting of a grid is a non-empty list of values "
                         f"({', '.join(wrong) or 'none given'})")
    return grid


def measures(config: dict[str, Any], returns: np.ndarray) -> SweepRow:
    daily = returns[np.isfinite(returns)]
    mean = float(daily.mean()) if daily.size else math.nan
    volatility = float(daily.std(ddof=1)) if daily.size > 1 else math.nan
    return SweepRow(config=config, annual_return=mean * TRADING_DAYS,
                    annual_volatility=volatility * math.sqrt(TRADING_DAYS), sharpe=sharpe(daily),
                    max_drawdown=max_drawdown(np.cumprod(1.0 + daily)))


def sweep(target: StrategyTarget, grid: Mapping[str, list[Any]], prices: pd.DataFrame,
          workers: Workers = IN_PROCESS, progress: Callable[[int, int], None] | None = None) -> list[SweepRow]:
    """Each configuration of the grid backtested on `prices`, in the grid's order (the strategy's own first)."""
    strategy = target.build()
    configs = config_grid(target, strategy, grid, limit=MAX_SETS)
    start = min(strategy.lookback, len(prices) - 1)
    results = run_tasks(config_returns, (target, config_dict(strategy.config), prices), configs, workers, progress)
    return [measures(config, returns[start + 1:]) for config, returns in zip(configs, results, strict=True)]

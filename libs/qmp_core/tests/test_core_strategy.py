"""The Strategy plug-in API: loading by import path, config parsing, weight and frame checks."""

import math
from typing import ClassVar

import pandas as pd
import pytest
from msgspec import Struct

from qmp_core.strategy import (
    BaseStrategy,
    InvalidWeights,
    Strategy,
    StrategyLoadError,
    check_frame,
    check_weights,
    load_strategy,
)

HERE = __name__


class SmallConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    weight: float = 0.5


class Configured(BaseStrategy):
    Config = SmallConfig
    lookback = 2

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        return prices * 0.0 + self.config.weight


class ZeroLookback(BaseStrategy):
    lookback = 0

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        return prices * 0.0


class Unimplemented(BaseStrategy):
    lookback = 5


class NoWeights:
    lookback = 1
    leverage_limit = 1.0
    config: ClassVar[dict[str, float]] = {}


def not_a_class() -> None:
    """A function, which load_strategy must refuse."""

def test_load_strategy_when_path_valid_then_built_with_config() -> None:
    strategy = load_strategy(f"{HERE}:Configured", {"weight": 0.25})

    assert isinstance(strategy, Strategy)
    assert strategy.config == SmallConfig(weight=0.25)
    assert strategy.lookback == 2


def test_load_strategy_when_no_config_then_defaults() -> None:
    strategy = load_strategy(f"{HERE}:Configured")

    assert strategy.config == SmallConfig()


def test_load_strategy_when_reference_strategy_then_lookback_covers_trend_window() -> None:
    strategy = load_strategy("qmp_lab.strategies.vol_target:VolatilityTarget", {"trend_window": 50})

    assert strategy.lookback >= 50
    assert strategy.leverage_limit == 1.0


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("no_colon_here", "package.module:Class"),
        ("qmp_core.strategy:", "package.module:Class"),
        ("qmp_nowhere.module:Thing", "cannot import module 'qmp_nowhere.module'"),
        (f"{HERE}:Missing", "has no attribute 'Missing'"),
        (f"{HERE}:not_a_class", "must name a class"),
        (f"{HERE}:ZeroLookback", "lookback must be an int >= 1"),
        (f"{HERE}:NoWeights", "target_weights(prices) is missing"),
        (f"{HERE}:Unimplemented", "target_weights(prices) is missing"),
    ],
)
def test_load_strategy_when_path_or_class_bad_then_clear_error(path: str, expected: str) -> None:
    with pytest.raises(StrategyLoadError) as raised:
        load_strategy(path)

    assert expected in str(raised.value)


def test_load_strategy_when_config_has_unknown_field_then_error_names_it() -> None:
    with pytest.raises(StrategyLoadError, match="weigth"):
        load_strategy(f"{HERE}:Configured", {"weigth": 0.1})


def test_load_strategy_when_config_value_wrong_type_then_error() -> None:
    with pytest.raises(StrategyLoadError, match="SmallConfig"):
        load_strategy(f"{HERE}:Configured", {"weight": "a lot"})


def test_check_weights_when_valid_then_returns_floats_by_symbol() -> None:
    row = pd.Series({"A": 0.25, "B": -0.5})

    assert check_weights(row, ["A", "B", "C"], 1.0) == {"A": 0.25, "B": -0.5}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_weights_when_not_finite_then_rejected(bad: float) -> None:
    with pytest.raises(InvalidWeights, match="finite"):
        check_weights(pd.Series({"A": 0.1, "B": bad}), ["A", "B"], 1.0)


def test_check_weights_when_gross_above_limit_then_rejected() -> None:
    with pytest.raises(InvalidWeights, match="leverage limit"):
        check_weights({"A": 0.7, "B": -0.4}, ["A", "B"], 1.0)


def test_check_weights_when_gross_at_limit_then_accepted() -> None:
    weights = {"A": 0.6, "B": -0.4}

    assert check_weights(weights, ["A", "B"], 1.0) == weights


def test_check_weights_when_symbol_unknown_then_rejected() -> None:
    with pytest.raises(InvalidWeights, match="unknown symbols \\['ZZZ'\\]"):
        check_weights({"A": 0.1, "ZZZ": 0.1}, ["A", "B"], 1.0)


def test_check_frame_when_shape_differs_then_rejected() -> None:
    prices = pd.DataFrame({"A": [1.0, 2.0], "B": [3.0, 4.0]})

    with pytest.raises(InvalidWeights, match="shape"):
        check_frame(prices.iloc[:, :1], prices)


def test_check_frame_when_not_a_frame_then_rejected() -> None:
    prices = pd.DataFrame({"A": [1.0, 2.0]})

    with pytest.raises(InvalidWeights, match="DataFrame"):
        check_frame(prices["A"], prices)

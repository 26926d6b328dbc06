"""The Strategy plug-in API (ARCHITECTURE §6).

A strategy is a class loaded by import path (`package.module:Class`). Its core is vectorised: given a
price history (DataFrame, index = timestamps, columns = symbols) it returns target weights of the same
shape, where row t depends only on rows ≤ t. Execution calls it on the live window of the last
`lookback` + 1 rows and trades the last row; the verification suite calls it on whole histories.

Contract:
- `lookback: int` (≥ 1): rows of history before the current one that the last row needs;
- `leverage_limit: float` (> 0): the largest gross weight Σ|w| the strategy may ask for;
- `config`: a msgspec Struct (declare `Config` on a `BaseStrategy` subclass) or a plain dict (may be empty);
- the constructor: `Class()` builds it with its defaults; `Class(config=...)` with a configuration, when
  it takes one. A constructor without `config=` is valid: the strategy then has one configuration, its
  own, and the verification suite runs it as it is (it varies nothing);
- `target_weights(prices) -> DataFrame`: same index and columns as `prices`, finite weights;
- `fit(train)` (optional): learn from past data before trading.
"""

import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import msgspec
import pandas as pd

WEIGHT_TOLERANCE = 1e-9


class StrategyLoadError(ValueError):
    """A strategy could not be imported, built or configured; the message says which and why."""


class InvalidWeights(ValueError):
    """A strategy returned weights that execution must not trade; the message says what was wrong."""


@runtime_checkable
class Strategy(Protocol):
    """What execution and the verification suite need from a strategy."""

    lookback: int
    leverage_limit: float
    config: Any

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame: ...


class BaseStrategy:
    """Convenience base: parses `config` into the class's `Config` Struct and gives a no-op `fit`."""

    Config: ClassVar[type[msgspec.Struct] | None] = None
    lookback: int = 1
    leverage_limit: float = 1.0

    def __init__(self, config: Mapping[str, Any] | msgspec.Struct | None = None) -> None:
        self.config: Any = parse_config(type(self).Config, config)

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError(f"{type(self).__name__} must implement target_weights(prices)")

    def fit(self, train: pd.DataFrame) -> None:
        """Learn from past data; a rule-based strategy has nothing to learn."""


def parse_config(
    config_type: type[msgspec.Struct] | None, config: Mapping[str, Any] | msgspec.Struct | None
) -> Any:
    """Return `config` as an instance of `config_type` (defaults when None), or as a dict without one."""
    if config_type is None:
        if isinstance(config, msgspec.Struct):
            return config
        return dict(config or {})
    if isinstance(config, config_type):
        return config
    values = msgspec.structs.asdict(config) if isinstance(config, msgspec.Struct) else dict(config or {})
    try:
        return msgspec.convert(values, config_type, strict=False)
    except msgspec.ValidationError as error:
        raise StrategyLoadError(f"invalid {config_type.__name__}: {error} (got {values!r})") from error


def load_strategy(path: str, config: Mapping[str, Any] | None = None) -> Strategy:
    """Import `package.module:Class`, build it with `config`, check it honours the contract."""
    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name or ":" in class_name:
        raise StrategyLoadError(f"strategy path must look like 'package.module:Class', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise StrategyLoadError(f"cannot import module {module_name!r} of strategy {path!r}: {error}") from error
    target: Any = module
    for part in class_name.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise StrategyLoadError(f"module {module_name!r} has no attribute {class_name!r}") from None
    if not isinstance(target, type):
        raise StrategyLoadError(f"{path!r} must name a class, found {type(target).__name__}")
    try:
        strategy = target() if config is None else target(config=dict(config))
    except StrategyLoadError:
        raise
    except TypeError as error:
        raise StrategyLoadError(f"cannot build {path!r} with config {config!r}: {error}") from error
    check_strategy(strategy, path)
    return strategy


def check_strategy(strategy: Any, name: str = "") -> None:
    """Raise StrategyLoadError unless `strategy` has a valid lookback, leverage limit and target_weights."""
    label = name or type(strategy).__name__
    lookback = getattr(strategy, "lookback", None)
    if not isinstance(lookback, int) or isinstance(lookback, bool) or lookback < 1:
        raise StrategyLoadError(f"{label}: lookback must be an int >= 1, got {lookback!r}")
    limit = getattr(strategy, "leverage_limit", None)
    if not isinstance(limit, int | float) or isinstance(limit, bool) or not math.isfinite(limit) or limit <= 0:
        raise StrategyLoadError(f"{label}: leverage_limit must be a finite number > 0, got {limit!r}")
    method = getattr(type(strategy), "target_weights", None)
    if not callable(getattr(strategy, "target_weights", None)) or method is BaseStrategy.target_weights:
        raise StrategyLoadError(f"{label}: target_weights(prices) is missing or not callable")
    fit = getattr(strategy, "fit", None)
    if fit is not None and not callable(fit):
        raise StrategyLoadError(f"{label}: fit must be callable when present, got {type(fit).__name__}")
    if not hasattr(strategy, "config"):
        raise StrategyLoadError(f"{label}: config attribute is missing (a msgspec Struct or a dict)")


def check_frame(weights: Any, prices: pd.DataFrame) -> pd.DataFrame:
    """Return `weights` if it is a DataFrame with the index and columns of `prices`; raise InvalidWeights."""
    if not isinstance(weights, pd.DataFrame):
        raise InvalidWeights(f"target_weights must return a DataFrame, got {type(weights).__name__}")
    if weights.shape != prices.shape:
        raise InvalidWeights(f"target_weights shape {weights.shape} differs from prices shape {prices.shape}")
    if not weights.columns.equals(prices.columns) or not weights.index.equals(prices.index):
        raise InvalidWeights("target_weights must keep the index and columns of prices")
    return weights


def check_weights(
    weights_row: pd.Series | Mapping[str, float], symbols: Sequence[str], leverage_limit: float
) -> dict[str, float]:
    """Return one row of target weights as a dict; raise InvalidWeights for NaN/inf, leverage or symbols.

    Symbols absent from the row have weight 0; a symbol not in `symbols` is an error.
    """
    row = weights_row.to_dict() if isinstance(weights_row, pd.Series) else dict(weights_row)
    known = set(symbols)
    unknown = sorted(str(s) for s in row if s not in known)
    if unknown:
        raise InvalidWeights(f"weights for unknown symbols {unknown[:10]} (expected a subset of the universe)")
    result: dict[str, float] = {}
    bad: list[str] = []
    for symbol, value in row.items():
        try:
            weight = float(value)
        except (TypeError, ValueError):
            bad.append(f"{symbol}={value!r}")
            continue
        if not math.isfinite(weight):
            bad.append(f"{symbol}={weight}")
            continue
        result[str(symbol)] = weight
    if bad:
        raise InvalidWeights(f"weights must be finite numbers, got {', '.join(bad[:10])}")
    gross = math.fsum(abs(w) for w in result.values())
    if gross > leverage_limit + WEIGHT_TOLERANCE:
        raise InvalidWeights(f"gross weight {gross:.6g} exceeds the leverage limit {leverage_limit:.6g}")
    return result

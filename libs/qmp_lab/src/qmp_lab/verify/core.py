"""What every verification test shares: the strategy under test, the run context and the result record.

A test is a module with `NAME` and `run(ctx: VerifyContext) -> TestResult`. It never prints: progress goes
through `ctx.log`, numbers into `TestResult.metrics` (JSON), human-readable checks into `checks`, tables
into `tables` and charts (PNG files it writes into `ctx.out_dir`) into `charts`.
"""

import hashlib
import importlib.util
import inspect
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from qmp_core.strategy import BaseStrategy, Strategy, load_strategy
from qmp_kernels.drawdown import max_drawdown_nb
from qmp_lab.parallel import Workers

Status = Literal["pass", "fail", "error", "skipped"]
TRADING_DAYS = 252.0


class VerificationError(RuntimeError):
    """A test could not be carried out (bad input, a service that did not start); the message says why."""


@dataclass(frozen=True)
class StrategyTarget:
    """The strategy under test: its import path, config, the ids it runs under, and its source file."""

    path: str
    config: Mapping[str, Any] | None = None
    strategy_id: str = ""
    pythonpath: str = ""  # extra import path a child process needs to load the strategy

    def build(self) -> Strategy:
        """Return a fresh instance (fitting mutates a strategy, so every fold gets its own)."""
        return load_strategy(self.path, self.config)

    @property
    def key(self) -> str:
        """Return a file-name-safe key of the path: `package.module:Class` -> `package.module-Class`."""
        return strategy_key(self.path)

    @property
    def label(self) -> str:
        return self.strategy_id or self.path.rpartition(":")[2]

    def source_file(self) -> Path | None:
        return strategy_source_file(self.path)

    def source_hash(self) -> str:
        return source_hash(self.path)


def strategy_key(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", path)


def strategy_source_file(path: str) -> Path | None:
    """Return the file defining the strategy's class (its module's file), or None if it cannot be found."""
    module_name = path.partition(":")[0]
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return None
    return Path(spec.origin).resolve()


def source_hash(path: str) -> str:
    """Return the SHA-256 of the strategy's source file ('' if it has none): what a verification covers."""
    source = strategy_source_file(path)
    if source is None:
        return ""
    return hashlib.sha256(source.read_bytes()).hexdigest()


def has_fit(strategy: Any) -> bool:
    """Return True if the strategy learns from data (a `fit` other than the base class's no-op)."""
    fit = getattr(type(strategy), "fit", None)
    return callable(fit) and fit is not BaseStrategy.fit and not inspect.isabstract(type(strategy))


@dataclass
class Check:
    """One pass/fail criterion with what was expected and what was found; passed=None is informational."""

    name: str
    passed: bool | None
    detail: str


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class TestResult:
    name: str
    status: Status
    summary: str
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)
    seconds: float = 0.0

    __test__ = False  # not a pytest test class

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_json(self) -> dict[str, Any]:
        return jsonable(asdict(self))


def verdict(checks: list[Check]) -> Status:
    """Return pass when every pass/fail check passed, fail otherwise (informational checks do not count)."""
    return "pass" if all(c.passed is not False for c in checks) else "fail"


class ObservedRun(Protocol):
    """What one replay through the stack published for its strategy."""

    snapshots: list[dict[str, Any]]  # RiskSnapshots as JSON objects
    breaker_events: list[dict[str, Any]]
    accepted: int
    denied: int
    denial_reasons: dict[str, int]  # reason code -> count
    es_keys: list[str]  # the ES key that sized each accepted order it sized (OrderAccepted.es_key)


class StackReplay(Protocol):
    """Replay through a fresh stack until risk has published the day `until_day_ns`.

    The operator side provides it (`qmp_ops.replay.stack_replay`, which `qmp verify` passes): the lab
    states what a crisis replay needs, and does not know how servers and services are started.
    """

    def __call__(self, strategy_id: str, service_env: dict[str, dict[str, str]], home: Path, until_day_ns: int,
                 log: Callable[[str], None]) -> ObservedRun: ...


@dataclass
class VerifyContext:
    """What a test gets: the strategy, where to write charts, options, a seed, a progress logger, a stack."""

    target: StrategyTarget
    out_dir: Path
    options: dict[str, Any] = field(default_factory=dict)
    quick: bool = False  # short histories and small samples (tests); the CLI runs the full versions
    seed: int = 20_240_101
    home: Path = Path(".qmp")
    log: Callable[[str], None] = lambda message: None
    stack_replay: StackReplay | None = None  # tests that replay through the real services need one
    # where independent pieces (folds, configurations) run: here, or on Ray
    workers: Workers = field(default_factory=Workers)

    def option(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)

    def rng(self, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream])


def timed(run: Callable[[VerifyContext], TestResult], ctx: VerifyContext, name: str) -> TestResult:
    """Run a test, turning an exception into an `error` result that says what broke."""
    started = time.perf_counter()
    try:
        result = run(ctx)
    except Exception as error:  # a strategy may raise anything: the suite reports it and goes on to the next test
        result = TestResult(name=name, status="error", summary=f"{type(error).__name__}: {error}")
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------- shared numerics
def simple_returns(prices: pd.DataFrame) -> pd.DataFrame:
    """Return close-to-close simple returns; NaN where either close is missing."""
    return prices / prices.shift(1) - 1.0


def portfolio_returns(weights: pd.DataFrame, prices: pd.DataFrame) -> pd.Series:
    """Return the daily return of holding row t's weights from close t to close t + 1 (at row t + 1).

    A symbol without a return on a day (not listed, or a missing close) contributes nothing that day.
    """
    returns = simple_returns(prices).fillna(0.0)
    held = weights.shift(1).fillna(0.0)
    out = (held * returns).sum(axis=1)
    out.iloc[0] = 0.0
    return out


def sharpe(returns: np.ndarray | pd.Series, periods: float = TRADING_DAYS) -> float:
    """Return the annualised Sharpe ratio (zero risk-free rate); NaN with fewer than 2 points or no variance."""
    x = np.asarray(returns, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return math.nan
    sd = x.std(ddof=1)
    return float(x.mean() / sd * math.sqrt(periods)) if sd > 0 else math.nan


def max_drawdown(equity: np.ndarray | pd.Series) -> float:
    """Return the largest peak-to-trough fall of an equity curve as a positive fraction; 0 without data.

    The number is the kernel's (`qmp_kernels.drawdown.max_drawdown_nb`); this only adapts pandas input.
    """
    value, _ = max_drawdown_nb(np.ascontiguousarray(equity, dtype=np.float64))
    return float(value) if np.isfinite(value) else 0.0


def jsonable(value: Any) -> Any:
    """Return value with numpy scalars/arrays, Paths and non-finite floats made JSON-safe (NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Path | pd.Timestamp):
        return str(value)
    return value


def dumps(value: Any) -> str:
    return json.dumps(jsonable(value), indent=2, sort_keys=False)

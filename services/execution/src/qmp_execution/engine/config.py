"""The execution engine's settings and what one batch produces."""

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from qmp_core.limits import LIMIT_NAMES
from qmp_core.messages import (
    Fill,
    OrderEvent,
    PortfolioSnapshot,
    PreTradeLimits,
)
from qmp_execution.engine.codes import (
    DEFAULT_ES_KEYS,
)
from qmp_execution.engine.paper import PaperConfig


class EngineConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Sizing, risk-budget, pre-trade and paper-broker parameters; one per execution service."""

    initial_capital: Annotated[float, Meta(gt=0.0)] = 1_000_000.0
    capital: dict[str, Annotated[float, Meta(gt=0.0)]] = {}  # per strategy id; others get initial_capital
    min_order_notional: Annotated[float, Meta(ge=0.0)] = 100.0
    lot_size: Annotated[float, Meta(ge=0.0)] = 0.0  # 0 trades fractional shares
    vol_window: Annotated[int, Meta(ge=2)] = 20
    adv_window: Annotated[int, Meta(ge=1)] = 20
    default_daily_vol: Annotated[float, Meta(gt=0.0)] = 0.02
    # An order may be at most this fraction of the symbol's average daily volume (0: no limit).
    participation_limit: Annotated[float, Meta(ge=0.0)] = 0.1
    # Risk budget: the largest 99% ES (fraction of equity) sizing may lead to (0: no budget).
    es_budget: Annotated[float, Meta(ge=0.0)] = 0.05
    es_budgets: dict[str, Annotated[float, Meta(ge=0.0)]] = {}  # per strategy id
    es_keys: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_ES_KEYS))  # first present is used
    # Pre-trade checks (0 turns a check off).
    max_order_notional: Annotated[float, Meta(ge=0.0)] = 0.0
    max_order_rate: Annotated[int, Meta(ge=0)] = 10_000
    order_rate_interval_s: Annotated[float, Meta(gt=0.0)] = 1.0
    # Cancels of working orders for a new target (replacements) per interval (0: no limit). Over it, the
    # working order stays and the new order is denied; cancels that a halt, a kill or a stop-loss makes are
    # never held back.
    max_cancel_rate: Annotated[int, Meta(ge=0)] = 0
    cancel_rate_interval_s: Annotated[float, Meta(gt=0.0)] = 1.0
    price_band: Annotated[float, Meta(ge=0.0)] = 0.5
    cash_borrow_limit: Annotated[float, Meta(ge=0.0)] = 0.0  # fraction of equity cash may go below zero
    max_order_quantity: Annotated[float, Meta(ge=0.0)] = 0.0  # units per order
    max_position_notional: Annotated[float, Meta(ge=0.0)] = 0.0  # |position| × price per symbol, after the order
    max_gross_exposure: Annotated[float, Meta(ge=0.0)] = 0.0  # Σ|position| × price with working orders: credit limit
    # Orders on these symbols may only reduce |position| (a held position can still be closed).
    restricted_symbols: frozenset[str] = frozenset()
    # Price collar over a rolling window: an order priced more than this fraction from the mean close of the
    # symbol's last `price_collar_bars` bars is denied (0: off). `price_band` judges against one bar only.
    price_collar: Annotated[float, Meta(ge=0.0)] = 0.0
    price_collar_bars: Annotated[int, Meta(ge=1)] = 20
    # Repeated-execution throttle: this many fills of one symbol and side within `repeated_fills_window_s`
    # (event time) halt the strategy until a person resumes it (0: off).
    max_repeated_fills: Annotated[int, Meta(ge=0)] = 0
    repeated_fills_window_s: Annotated[float, Meta(gt=0.0)] = 60.0
    paper: PaperConfig = PaperConfig()
    # The venue every hosted strategy trades; "" binds each strategy to the venue of the first batch it
    # trades (kept in its snapshot). A strategy's book is marked with its venue's prices only.
    venue: str = ""
    # "paper" fills against bars here; "external" leaves accepted orders working until `apply_acks`.
    broker: Literal["paper", "external"] = "paper"
    # The rollout phases this instance trades: one environment's (its venue's paper or live endpoint), or any.
    phase_env: Literal["paper", "live", "any"] = "any"


def with_limits(config: EngineConfig, *levels: PreTradeLimits | None) -> EngineConfig:
    """Return `config` with each level's limits over it, in order (`ALL`'s, then the strategy's): a limit a
    level leaves out keeps the one below it."""
    changes: dict[str, Any] = {}
    for level in levels:
        for name in LIMIT_NAMES if level is not None else ():
            value = getattr(level, name)
            if value is not None:
                changes[name] = frozenset(value) if name == "restricted_symbols" else value
    return msgspec.structs.replace(config, **changes) if changes else config


def limit_values(config: EngineConfig) -> dict[str, Any]:
    """The pre-trade limits in force in `config`, by name (as `qmp limits show` prints them)."""
    return {name: sorted(value) if isinstance(value := getattr(config, name), frozenset) else value
            for name in LIMIT_NAMES}


@dataclass(frozen=True)
class StrategyResult:
    """One strategy's order events and fills for a batch, and its book after it."""

    strategy: str
    ts_event: int
    decisions: list[OrderEvent]
    fills: list[Fill]
    snapshot: PortfolioSnapshot
    error: str | None = None
    replayed: bool = False
    es_scale: float = 1.0
    halt_request: str = ""  # why the strategy must be halted (the repeated-execution throttle), "" if not


@dataclass(frozen=True)
class BatchResult:
    """The outcome of one batch for every hosted strategy; `complete` is False while chunks are pending."""

    ts_event: int
    results: dict[str, StrategyResult]
    rejected: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = True

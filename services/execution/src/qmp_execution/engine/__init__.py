"""Execution engine: strategies → target weights → sized, checked orders → paper fills → books. No I/O.

Per batch and per hosted strategy (each with its own id, capital, book, window and error state):
1. the strategy's window takes the batch's closes and volumes (a missing symbol carries its close);
2. the effective TradingState acts on working orders first: HALTED cancels them all, REDUCING cancels
   those that would grow |position| (cancels always pass);
3. once the window holds `lookback` + 1 rows, the strategy is called on it (`fit` on the first full
   window, again every `refit_every` batches when the strategy declares it) and its last row checked:
   finite, Σ|w| within its leverage limit, known symbols. A strategy that raises or returns bad weights
   is stopped (it keeps its positions; its working orders are cancelled; its implied orders, or a zero
   order per symbol, are denied with STRATEGY_ERROR) and the other strategies go on;
4. sizing (vectorised over the batch's symbols): target shares = w × equity × allocation ×
   size_multiplier × es_scale / close, where es_scale ≤ 1 keeps the projected 99% ES within the
   strategy's ES budget (from its latest RiskSnapshot, first key of `es_keys` present, scaled by target
   over current gross exposure); order = target − position (a working order on the symbol keeps working
   while the target wants at least as much; it is replaced when it would overshoot or go the wrong way),
   capped at max_order_fraction × equity and
   at participation_limit × ADV, rounded to the lot, skipped below the minimum notional;
5. gating: HALTED denies every new order, REDUCING lets only reductions of |position| through (clipped
   at flat); then pre-trade checks as NautilusTrader's risk engine: max notional per order, price band
   against the previous close, order rate (clock time), available cash (sells first; a buy larger than
   the cash is cut to what it affords, denied when that is below the minimum notional). Denials are
   OrderDenied events with a reason code; accepted orders carry how they were sized;
6. the paper broker (`paper.py`) fills working orders against the bar: volume limit, latency, dynamic
   slippage (`slippage.py`), fees; partial fills go on over the next bars.

Stop-loss (a risk `ClosePosition`, `on_close_position`): from the strategy's next batch the symbol's target
is 0 whatever its weight, until the position is flat; then the strategy's weights apply again (it may
re-enter). The close is the whole position in one order, free of the sizing caps (max_order_fraction,
participation limit, lot, minimum notional: they size entries, and a partial stop would leave the loss
open), checked first, with reason "stop-loss: ..." and reason code STOP_LOSS. It goes through the gate like
any order: REDUCING lets it through (it shrinks exposure); HALTED denies it (code HALTED) and cancels it
while working, and the stop stays in force, so the close goes out on the first batch after the resume. A
ClosePosition is applied once per command id; one for a strategy not hosted, a symbol not held, or a
position that has changed side since, is ignored and logged. The stop-losses in force travel in the
PortfolioSnapshot (`stop_losses`), so a restart restores them with the book; the service acknowledges a
ClosePosition only once a snapshot holding it is on the bus (handlers.StopLossAcks).

Ids are deterministic: order `<strategy>-<ts_event>-<symbol>`, fill `<order_id>-f<n>`. A batch whose
ts_event is not after the last processed one is not traded again: the same one returns the cached result
(a redelivery re-publishes the same messages, deduplicated downstream), an older one returns nothing.

The package: `config` (settings, results), `codes` (reason codes), `window` (price window, market
statistics), `pretrade` (the gate and the pre-trade checks), `stoploss`, `book` (positions, cash, working
orders), `slippage` and `paper` (the paper broker's fills), `host` (one strategy), `execution` (all of
them, the control entries).
"""

from qmp_execution.engine.codes import (
    CODE_BROKER_REJECTED,
    CODE_CANCEL_RATE_LIMIT,
    CODE_HALTED,
    CODE_INSUFFICIENT_CASH,
    CODE_KILLED,
    CODE_MAX_GROSS_EXPOSURE,
    CODE_MAX_NOTIONAL,
    CODE_MAX_POSITION,
    CODE_MAX_QUANTITY,
    CODE_PRICE_BAND,
    CODE_PRICE_COLLAR,
    CODE_RATE_LIMIT,
    CODE_REDUCING,
    CODE_REPEATED_EXECUTION,
    CODE_REPLACED,
    CODE_RESTRICTED,
    CODE_STOP_LOSS,
    CODE_STRATEGY_ERROR,
    DEFAULT_ES_KEYS,
)
from qmp_execution.engine.config import BatchResult, EngineConfig, StrategyResult
from qmp_execution.engine.execution import ExecutionEngine
from qmp_execution.engine.host import StrategyHost

__all__ = [
    "CODE_BROKER_REJECTED",
    "CODE_CANCEL_RATE_LIMIT",
    "CODE_HALTED",
    "CODE_INSUFFICIENT_CASH",
    "CODE_KILLED",
    "CODE_MAX_GROSS_EXPOSURE",
    "CODE_MAX_NOTIONAL",
    "CODE_MAX_POSITION",
    "CODE_MAX_QUANTITY",
    "CODE_PRICE_BAND",
    "CODE_PRICE_COLLAR",
    "CODE_RATE_LIMIT",
    "CODE_REDUCING",
    "CODE_REPEATED_EXECUTION",
    "CODE_REPLACED",
    "CODE_RESTRICTED",
    "CODE_STOP_LOSS",
    "CODE_STRATEGY_ERROR",
    "DEFAULT_ES_KEYS",
    "BatchResult",
    "EngineConfig",
    "ExecutionEngine",
    "StrategyHost",
    "StrategyResult",
]

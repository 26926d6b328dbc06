"""The execution engine: every hosted strategy, the control entries, batches in, results out."""

import logging
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from qmp_core import subjects
from qmp_core.clock import Clock
from qmp_core.messages import (
    BarBatch,
    ClosePosition,
    Fill,
    PortfolioSnapshot,
    PreTradeLimits,
    RiskSnapshot,
    RolloutState,
    TradingState,
)
from qmp_core.rollout_state import is_active, phase_env, phase_name
from qmp_core.strategy import Strategy
from qmp_core.trading_state import ControlEntries
from qmp_core.validation import ValidatedBatch, merge_chunks, validate_batch
from qmp_execution.engine.book import QTY_EPSILON
from qmp_execution.engine.broker import BrokerOrder, OrderAck
from qmp_execution.engine.codes import (
    CLOSE_IDS_KEPT,
)
from qmp_execution.engine.config import BatchResult, EngineConfig, StrategyResult, with_limits
from qmp_execution.engine.host import StrategyHost
from qmp_execution.engine.slippage import SlippageConfig

log = logging.getLogger(__name__)


class ExecutionEngine:
    """Hosts strategies and turns bar batches into gated orders, paper fills and portfolio snapshots."""

    def __init__(self, strategies: Mapping[str, Strategy], config: EngineConfig, clock: Clock,
                 controls: ControlEntries | None = None) -> None:
        if not strategies:
            raise ValueError("execution needs at least one strategy")
        unknown = sorted((set(config.capital) | set(config.es_budgets)) - set(strategies))
        if unknown:
            raise ValueError(f"capital / ES budgets given for strategies that are not hosted: {unknown}")
        self.config = config
        self.clock = clock
        self.controls = controls or ControlEntries()
        self.hosts = {sid: StrategyHost(sid, strategy, config, clock) for sid, strategy in strategies.items()}
        self.limits: dict[str, PreTradeLimits] = {}  # operators' limits by strategy (or ALL), over `config`
        # Strategies whose rollout phase trades at another instance's venue (why), wound down here.
        self.elsewhere: dict[str, str] = {}
        for sid in self.hosts:
            self.follow_rollout(sid, None)
        self._pending: dict[tuple[str, int], dict[int, ValidatedBatch]] = {}
        self._close_ids: set[str] = set()
        self._close_order: deque[str] = deque()

    def strategies(self) -> list[str]:
        """Return the hosted strategy ids, sorted."""
        return sorted(self.hosts)

    def stop_loss_ids(self, strategy: str) -> set[str]:
        """Return the command ids of the strategy's stop-losses in force."""
        return {stop.command_id for stop in self.hosts[strategy].stop_losses.values()}

    def risk_behind(self) -> list[str]:
        """Return the strategies whose latest risk snapshot is older than the batch they last traded.

        A strategy risk has never answered for is not behind (nothing to wait for).
        """
        return sorted(sid for sid, host in self.hosts.items()
                      if host.risk is not None and host.risk.ts_event < host.portfolio.last_ts)

    def slippage_config(self, strategy: str) -> SlippageConfig:
        return self.hosts[strategy].broker.model.config

    def use_slippage(self, strategy: str, config: SlippageConfig) -> None:
        """Let the strategy's paper broker fill with a (re)calibrated slippage model."""
        self.hosts[strategy].use_slippage(config)

    def state(self, strategy: str) -> TradingState:
        state = self.controls.effective(strategy)
        if strategy in self.elsewhere:  # no capital here: what it holds is closed by its normal orders
            return msgspec.structs.replace(state, allocation=0.0)
        return state

    def follow_rollout(self, strategy: str, rollout: RolloutState | None) -> bool:
        """Take a strategy's rollout (None: it has none); False if the strategy is not hosted here.

        Its id goes on every new order (`deployment_id`). An instance that trades one environment's phases
        (`config.phase_env`: its venue's paper endpoint, or its live one) gives a strategy whose phase is
        of the other environment no capital: it trades at the other instance's venue now, and whatever it
        still holds here is closed by normal orders (a promotion from paper, a rollback from live). A rollout
        that trades from an account sizes on its budget there (`budget_share`), never above the book's capital.
        """
        host = self.hosts.get(strategy)
        if host is None:
            return False
        host.deployment_id = rollout.rollout_id if rollout is not None else ""
        host.budget_share = (min(1.0, rollout.budget / host.capital)
                             if rollout is not None and rollout.account and rollout.budget > 0.0 else 1.0)
        env = phase_env(rollout)
        if self.config.phase_env in ("any", env):
            self.elsewhere.pop(strategy, None)
        else:
            phase = phase_name(rollout) if is_active(rollout) else "no rollout"
            self.elsewhere[strategy] = (f"{phase} is a {env} phase, traded at another venue: this instance "
                                        f"trades {self.config.phase_env} phases")
        return True

    def set_limits(self, key: str, limits: PreTradeLimits | None) -> list[str]:
        """Take an operator's limits for a strategy or for every one (`ALL`; None: removed); the strategies
        they reach trade under them from the next order on. Return those strategies."""
        if limits is None:
            self.limits.pop(key, None)
        else:
            self.limits[key] = limits
        reached = sorted(self.hosts) if key == subjects.ALL_STRATEGIES else sorted({key} & set(self.hosts))
        for sid in reached:
            self.hosts[sid].configure(with_limits(self.config, self.limits.get(subjects.ALL_STRATEGIES),
                                                  self.limits.get(sid)))
        return reached

    def window_rows(self) -> int:
        """Return how many past batches rebuild every strategy's window after a restart."""
        return max(host.window.capacity for host in self.hosts.values())

    def restore(self, snapshot: PortfolioSnapshot) -> None:
        host = self.hosts.get(snapshot.strategy)
        if host is None:
            raise ValueError(f"no hosted strategy {snapshot.strategy!r} for this snapshot")
        host.restore(snapshot)
        for stop in snapshot.stop_losses:  # a redelivery of a stop-loss the snapshot holds is applied once
            self._remember_close(stop.command_id)

    def on_risk(self, snapshot: RiskSnapshot) -> bool:
        """Take a strategy's latest RiskSnapshot (its ES sizes the next orders); False if not hosted here."""
        host = self.hosts.get(snapshot.strategy)
        if host is None:
            return False
        host.on_risk(snapshot)
        return True

    def on_close_position(self, command: ClosePosition) -> bool:
        """Apply a risk stop-loss (see the module docstring) once per command id; False if not applied."""
        about = {"strategy": command.strategy, "symbol": command.symbol, "command_id": command.command_id}
        if command.command_id in self._close_ids:
            log.info("stop-loss ignored: command id already seen (a redelivery)", extra=about)
            return False
        host = self.hosts.get(command.strategy)
        if host is None:
            log.info("stop-loss ignored: strategy not hosted here", extra=about)
            return False
        # Remembered even when ignored: a late redelivery must not close a position opened since.
        self._remember_close(command.command_id)
        return host.on_close_position(command)

    def _remember_close(self, command_id: str) -> None:
        if command_id and command_id not in self._close_ids:
            self._close_ids.add(command_id)
            self._close_order.append(command_id)
            if len(self._close_order) > CLOSE_IDS_KEPT:
                self._close_ids.discard(self._close_order.popleft())

    def apply_acks(self, strategy: str, acks: Sequence[OrderAck]) -> StrategyResult:
        """Book an external broker's answers to a strategy's orders of the last batch."""
        return self.hosts[strategy].apply_acks(acks)

    def kills_due(self, done: Collection[tuple[str, str]]) -> list[tuple[str, TradingState]]:
        """Return (strategy, state) for every hosted strategy under a kill not in `done` ((strategy, kill id)
        pairs acted on)."""
        due = []
        for sid in self.strategies():
            state = self.state(sid)
            if state.kill_id and (sid, state.kill_id) not in done:
                due.append((sid, state))
        return due

    def kill(self, strategy: str, state: TradingState) -> StrategyResult:
        """Apply the kill in force on a strategy now (see `StrategyHost.kill`)."""
        return self.hosts[strategy].kill(state.kill_id, state.flatten, state.reason or "kill switch",
                                         self.clock.now_ns())

    def settle(self, strategy: str, result: StrategyResult, acks: Sequence[OrderAck]) -> StrategyResult:
        """Book a broker's answers to the orders of `result` (a kill's closing orders)."""
        return self.hosts[strategy].settle(result, acks)

    def position_differences(self, venue: Mapping[str, float]) -> list[tuple[str, float, float]]:
        """Return (symbol, booked, venue) where the venue's positions differ from the sum of the books.

        The books of every hosted strategy trade through the one broker: their sum is what the venue's
        account should hold.
        """
        booked: dict[str, float] = {}
        for host in self.hosts.values():
            for symbol, quantity in host.portfolio.positions.items():
                booked[symbol] = booked.get(symbol, 0.0) + quantity
        out = []
        for symbol in sorted(set(booked) | set(venue)):
            mine, theirs = booked.get(symbol, 0.0), float(venue.get(symbol, 0.0))
            if abs(mine - theirs) > QTY_EPSILON * max(1.0, abs(mine), abs(theirs)):
                out.append((symbol, mine, theirs))
        return out

    def adopt(self, differences: Sequence[tuple[str, float, float]], ts_event: int) -> tuple[
        dict[str, StrategyResult], list[tuple[str, float, float]]
    ]:
        """Take the venue's positions into the books where a difference has one owner; return the results of
        the strategies that took some (their adjustment fills) and the differences no book could take.

        A symbol's difference belongs to the one strategy whose book holds it, or to the only strategy on the
        account; it is booked at that book's last price for the symbol. Several holders, no holder among
        several strategies, or no price: nobody can say whose it is, so it is not adopted.
        """
        taken: dict[str, list[tuple[str, float, float]]] = {}
        left: list[tuple[str, float, float]] = []
        for symbol, booked, venue in differences:
            holders = [sid for sid, host in self.hosts.items() if symbol in host.portfolio.positions]
            owner = holders[0] if len(holders) == 1 else (self.strategies()[0] if not holders and len(
                self.hosts) == 1 else None)
            if owner is None or not self.hosts[owner].portfolio.prices.get(symbol, 0.0) > 0.0:
                left.append((symbol, booked, venue))
                continue
            taken.setdefault(owner, []).append((symbol, booked, venue))
        results = {sid: self.hosts[sid].adopt([(s, v - b) for s, b, v in diffs], ts_event)
                   for sid, diffs in taken.items()}
        return results, left

    def adopt_orders(self, strategy: str, orders: Sequence[BrokerOrder], ts_event: int) -> tuple[list[str],
                                                                                                 list[str]]:
        """Take the strategy's open orders the venue holds and its book does not (see `StrategyHost`): the
        order ids taken, and those not taken. The book with them goes out with the next batch."""
        return self.hosts[strategy].adopt_orders(orders, ts_event)

    def open_orders(self, strategy: str) -> list[BrokerOrder]:
        """Return the strategy's orders an external broker may still fill (see `StrategyHost.reconcile`)."""
        return self.hosts[strategy].open_orders()

    def reconcile(self, strategy: str, acks: Sequence[OrderAck], ts_event: int) -> list[Fill]:
        """Book the fills an external broker reports beyond what is booked (cumulative answers)."""
        return self.hosts[strategy].reconcile(acks, ts_event)

    def warm(self, batches: Iterable[BarBatch]) -> int:
        """Rebuild windows from batches traded before a restart (any order); return timestamps used."""
        groups: dict[tuple[int, str], dict[int, ValidatedBatch]] = {}
        for batch in batches:
            try:
                groups.setdefault((batch.ts_event, batch.venue), {})[batch.chunk] = validate_batch(batch)
            except ValueError:
                continue
        for (_, venue), parts in sorted(groups.items()):
            merged = merge_chunks([parts[c] for c in sorted(parts)])
            for host in self.hosts.values():
                if host.venue == venue:
                    host.warm(merged)
        return len(groups)

    def follows(self, venue: str) -> bool:
        """Return whether a hosted strategy trades (or may still bind to) the venue."""
        return any(host.venue in ("", venue) for host in self.hosts.values())

    def process(self, batch: BarBatch) -> BatchResult:
        """Trade one batch for every strategy; raise BatchRejected (a ValueError) for an unusable batch."""
        validated = validate_batch(batch)
        merged = self._assemble(batch, validated)
        if merged is None:
            return BatchResult(batch.ts_event, {}, validated.rejected, complete=False)
        results: dict[str, StrategyResult] = {}
        for sid, host in self.hosts.items():
            if not host.trades(batch.venue):
                continue
            result = host.on_batch(merged, batch.seq, self.state(sid))
            if result is not None:
                results[sid] = result
        return BatchResult(batch.ts_event, results, validated.rejected)

    def _assemble(self, batch: BarBatch, validated: ValidatedBatch) -> ValidatedBatch | None:
        """Return the whole timestamp once every chunk of it has arrived (chunks never trade alone).

        Chunks wait in memory: a restart between two chunks of one timestamp skips that timestamp.
        """
        if batch.chunks <= 1:
            return validated
        trading = [host for host in self.hosts.values() if host.venue in ("", batch.venue)]
        if all(batch.ts_event <= host.portfolio.last_ts for host in trading):
            return validated  # already traded: the hosts answer with their cached results
        key = (batch.venue, batch.ts_event)
        parts = self._pending.setdefault(key, {})
        parts[batch.chunk] = validated
        if len(parts) < batch.chunks:
            return None
        del self._pending[key]
        for stale in [k for k in self._pending if k[1] < batch.ts_event]:
            del self._pending[stale]
        return merge_chunks([parts[c] for c in sorted(parts)])

    def status(self) -> dict[str, Any]:
        return {sid: host.status(self.state(sid)) | {"elsewhere": self.elsewhere.get(sid, "")}
                for sid, host in self.hosts.items()}

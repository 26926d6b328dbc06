"""A test bench for the rollout engine: a TestClock, a Monitor fed by hand, and effects collected."""

from collections.abc import Mapping

import msgspec

from qmp_core.clock import NS_PER_SECOND, TestClock
from qmp_core.messages import (
    NO_PHASE,
    Account,
    ControlCommand,
    DeployCommand,
    DeploymentEvent,
    Fill,
    RiskSnapshot,
    RolloutState,
    TradingState,
)
from qmp_deployer.engine.gates import Monitor
from qmp_deployer.engine.plan import Plan, parse_plan
from qmp_deployer.engine.rollout import Context, Outcome, clear_outbox, evaluate, handle_command, record_fill

T0 = 1_700_000_000 * NS_PER_SECOND
MINUTE = 60 * NS_PER_SECOND

PLAN_TOML = b"""
name = "test"
gate_interval_s = 60.0

[[phases]]
name = "paper"
env = "paper"
allocation = 0.1
min_soak_h = 1.0
min_fills = 2

[[phases]]
name = "live_10"
env = "live"
allocation = 0.1
min_soak_h = 1.0

[[phases]]
name = "live_50"
env = "live"
allocation = 0.5
min_soak_h = 1.0

[[phases]]
name = "live_100"
env = "live"
allocation = 1.0
min_soak_h = 1.0
approval = true

[metrics.drawdown]
source = "drawdown_24h"
warning = 0.10
critical = 0.15
action = "reduce_allocation"
action_factor = 0.5
failure_limit = 1
stale_after_s = 900.0
fail_closed = true

[metrics.var_95]
source = "var:historical_95"
warning = 0.05
critical = 0.08
action = "halt_new_positions"
failure_limit = 2
stale_after_s = 900.0
fail_closed = true

[metrics.slippage]
source = "slippage_bps"
warning = 20.0
critical = 50.0
action = "reduce_order_size"
action_factor = 0.5
failure_limit = 3
"""


def make_plan(text: bytes = PLAN_TOML, **changes: object) -> Plan:
    plan = parse_plan(text)
    return msgspec.structs.replace(plan, **changes) if changes else plan


class Bench:
    """One strategy's rollout driven by hand: commands, inputs and evaluations at test-clock times."""

    def __init__(self, plan: Plan | None = None, strategy: str = "s1", epoch: int = 1,
                 accounts: dict[str, Account] | None = None, rollouts: dict[str, RolloutState] | None = None) -> None:
        # Benches given the same `accounts` and `rollouts` share them: strategies of one deployer.
        self.accounts = accounts if accounts is not None else {}
        self.rollouts = rollouts if rollouts is not None else {}
        self.plan = plan or make_plan()
        self.strategy = strategy
        self.epoch = epoch
        self.clock = TestClock(T0)
        self.monitor = Monitor()
        self.state: RolloutState | None = None
        self.controls: list[ControlCommand] = []
        self.events: list[DeploymentEvent] = []
        self.endpoints: list[str] = []  # broker endpoint choices sent
        self.trading: TradingState | None = None
        self.var_book: Mapping[str, tuple[float, float]] | None = None
        self.known: frozenset[str] = frozenset()
        self._fill_seq = 0

    @property
    def phase(self) -> str:
        assert self.state is not None
        if self.state.phase_index < 0 or self.state.status == "ABORTED":
            return NO_PHASE
        return self.state.phases[self.state.phase_index].name

    def ctx(self) -> Context:
        book = self.var_book if self.var_book is not None else self.monitor.var_book(self.plan.portfolio_var_key)
        return Context(now_ns=self.clock.now_ns(), epoch=self.epoch, plan=self.plan, trading=self.trading,
                       var_book=book, accounts=self.accounts, rollouts=self.rollouts)

    def send(self, command: DeployCommand) -> Outcome:
        outcome = handle_command(self.strategy, self.state, command, self.ctx(), {self.plan.name: self.plan},
                                 known=self.known)
        if outcome.accepted and outcome.changed:
            self._carry_out(outcome)
        return outcome

    def _carry_out(self, outcome: Outcome) -> None:
        assert outcome.state is not None
        self.controls += outcome.state.outbox_controls
        if outcome.state.outbox_endpoint:
            self.endpoints.append(outcome.state.outbox_endpoint)
        self.events += outcome.state.outbox_events
        self.state = self.rollouts[self.strategy] = clear_outbox(outcome.state)

    def snapshot(self, drawdown: float = 0.01, var: float = 0.01, status: str = "ok", equity: float = 1e6,
                 ts: int | None = None, strategy: str | None = None) -> None:
        self.monitor.on_snapshot(RiskSnapshot(
            strategy=strategy or self.strategy, ts_event=self.clock.now_ns() if ts is None else ts, equity=equity,
            var={"historical_95": var, "historical_99": var * 1.5}, es={"historical_95": var * 1.2},
            drawdown_24h=drawdown, drawdown_max=drawdown, volatility_ratio=1.0, breakers=[], status=status,
        ))

    def fill(self, slippage_bps: float = 2.0) -> None:
        self._fill_seq += 1
        fill = Fill(strategy=self.strategy, order_id=f"o{self._fill_seq}", fill_id=f"f{self._fill_seq}",
                    symbol="AAA", side="BUY", quantity=10.0, price=100.0, arrival_price=100.0,
                    slippage_bps=slippage_bps, fee=0.0, ts_event=self.clock.now_ns())
        if self.monitor.on_fill(fill) and self.state is not None:
            self.state = record_fill(self.state)

    def evaluate(self, exposure: float = 0.0) -> Outcome:
        assert self.state is not None
        now = self.clock.now_ns()
        allocation = self.state.allocation
        readings = {name: self.monitor.reading(self.strategy, spec, now, allocation)
                    for name, spec in self.plan.enabled_metrics().items()}
        outcome = evaluate(self.state, readings, self.ctx(), exposure=exposure)
        if outcome.changed:
            self._carry_out(outcome)
        return outcome

    def step(self, minutes: float = 1.0, clean: bool = True, exposure: float = 0.0, **snapshot: float) -> Outcome:
        """Advance the clock, publish a snapshot (clean by default) and a fill, and evaluate."""
        self.clock.advance(int(minutes * MINUTE))
        if clean or snapshot:
            self.snapshot(**snapshot)
        self.fill()
        return self.evaluate(exposure=exposure)

    def run_until(self, predicate, max_minutes: int = 24 * 60, **step: float) -> int:
        """Step one minute at a time until predicate(bench); return the minutes it took."""
        for minute in range(1, max_minutes + 1):
            self.step(**step)
            if predicate(self):
                return minute
        raise AssertionError(f"condition not reached in {max_minutes} minutes; state {self.state}")

    def kinds(self) -> list[str]:
        return [event.kind for event in self.events]

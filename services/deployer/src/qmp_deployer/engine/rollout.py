"""The phase machine of a rollout: paper → live 10% → 50% → 100%, with gates, actions and rollback.

Pure and synchronous: every function takes a `RolloutState` and a `Context` (time, lease epoch, plan,
the strategy's effective trading state, the portfolio's VaR book) and returns an `Outcome` holding the
next state. Effects are not carried out here: they are appended to the state's outbox (control commands
with deterministic ids, audit events), which the handlers write with the state in one compare-and-set and
then carry out. So a decision is either fully recorded or not at all, and a crash never repeats one.

Soak: time counts only while the status is SOAKING, from one evaluation to the next; an evaluation that
finds a gate not ok holds the phase (HOLDING) and the clock stops until a clean one. After a restart the
clock re-anchors at the first evaluation (`restore`), so downtime is not soak time.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from qmp_core import subjects
from qmp_core.clock import NS_PER_HOUR
from qmp_core.messages import (
    NO_PHASE,
    Abort,
    Account,
    ControlCommand,
    Defensive,
    Deploy,
    DeployCommand,
    DeploymentEvent,
    GateResult,
    GetRolloutStatus,
    Halt,
    HaltRollout,
    Pause,
    Promote,
    ReduceOrderSize,
    ReleaseSafeMode,
    Resume,
    ResumeRollout,
    Rollback,
    RolloutState,
    SetAllocation,
    TradingState,
)
from qmp_core.rollout_state import is_active, phase_name, soak_remaining
from qmp_deployer.engine.accounts import budget_for, capital_blocker
from qmp_deployer.engine.gates import Reading, evaluate_gate
from qmp_deployer.engine.plan import Plan

ACTOR = "deployer"
RECENT_EVENTS = 10
RECENT_COMMANDS = 256
SOAK_STATUSES = frozenset({"SOAKING", "HOLDING", "READY", "AWAITING_APPROVAL", "COMPLETE"})
FROZEN_STATUSES = frozenset({"HALTED", "ROLLED_BACK", "ABORTED"})
NEEDS_EXPECTED_PHASE = (Promote, Pause, ResumeRollout, Rollback)


@dataclass(frozen=True)
class Context:
    """What a decision may look at besides the state; built by the handlers for each decision."""

    now_ns: int
    epoch: int
    plan: Plan
    trading: TradingState | None = None  # the strategy's effective trading state
    var_book: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # strategy -> (VaR, equity)
    accounts: Mapping[str, Account] = field(default_factory=dict)  # account id -> account
    rollouts: Mapping[str, RolloutState] = field(default_factory=dict)  # every strategy's rollout (capital held)


@dataclass(frozen=True)
class Outcome:
    accepted: bool
    reason: str
    state: RolloutState | None
    changed: bool = False


def is_due(state: RolloutState, now_ns: int, plan: Plan) -> bool:
    """Return True when the gates are due an evaluation (every `gate_interval_s` of the deployer's clock)."""
    if state.status == "ABORTED" or now_ns <= 0:
        return False
    return state.last_eval_ns == 0 or now_ns - state.last_eval_ns >= plan.gate_interval_ns


def restore(state: RolloutState) -> RolloutState:
    """Return a state reloaded after a restart: the soak clock re-anchors, so downtime is not soak time."""
    return msgspec.structs.replace(state, soak_anchor_ns=0)


def record_fill(state: RolloutState) -> RolloutState:
    """Count a fill toward the soak (only while the soak clock runs)."""
    if state.status != "SOAKING":
        return state
    return msgspec.structs.replace(state, fills=state.fills + 1)


def clear_outbox(state: RolloutState) -> RolloutState:
    return msgspec.structs.replace(state, outbox_controls=[], outbox_events=[], outbox_endpoint="")


def has_outbox(state: RolloutState) -> bool:
    return bool(state.outbox_controls or state.outbox_events or state.outbox_endpoint)


class _Draft:
    """A decision in progress: the state being changed, plus the events and controls it produces."""

    def __init__(self, state: RolloutState, ctx: Context, command_id: str = "", issued_by: str = ACTOR) -> None:
        self.state = state
        self.ctx = ctx
        self.command_id = command_id
        self.issued_by = issued_by
        self.events: list[DeploymentEvent] = []
        self.controls: list[ControlCommand] = []
        self.endpoint = ""  # a broker endpoint choice to send, if any
        self._first_seq = state.event_seq + 1

    def set(self, **changes: object) -> None:
        self.state = msgspec.structs.replace(self.state, **changes)

    def event(self, kind: str, *, trigger: str = "", reason: str = "", phase_from: str | None = None,
              allocation_before: float | None = None) -> None:
        state = self.state
        seq = state.event_seq + 1
        gates = state.gates
        self.events.append(DeploymentEvent(
            strategy=state.strategy, rollout_id=state.rollout_id, seq=seq, kind=kind,
            phase_from=phase_name(state) if phase_from is None else phase_from, phase_to=phase_name(state),
            status=state.status, trigger=trigger, issued_by=self.issued_by, command_id=self.command_id,
            allocation_before=state.allocation if allocation_before is None else allocation_before,
            allocation_after=state.allocation,
            metrics={gate.metric: gate.value for gate in gates},
            thresholds={gate.metric: [gate.warning, gate.critical] for gate in gates},
            reason=reason, epoch=self.ctx.epoch, ts_event=self.ctx.now_ns,
        ))
        self.set(event_seq=seq)

    def control(self, command: ControlCommand) -> None:
        # Deterministic ids: the same decision replayed from the outbox carries the same ids (applied once);
        # the epoch is the fencing token of the deployer instance that decided it.
        command_id = f"{self.state.rollout_id}-{self._first_seq}-{len(self.controls)}-e{self.ctx.epoch}"
        self.controls.append(msgspec.structs.replace(command, issued_by=ACTOR, command_id=command_id,
                                                     ts_event=self.ctx.now_ns))

    def set_controls(self, *, allocation: float | None = None, defensive: bool | None = None,
                     size_multiplier: float | None = None) -> None:
        """Bring the deployer's control entry to these values, sending only what differs."""
        state = self.state
        if allocation is not None and not math.isclose(allocation, state.allocation, abs_tol=1e-12):
            self.control(SetAllocation(allocation=allocation))
            self.set(allocation=allocation)
        if defensive is not None and defensive != state.defensive:
            self.control(Defensive(on=defensive))
            self.set(defensive=defensive)
        if size_multiplier is not None and not math.isclose(size_multiplier, state.size_multiplier, abs_tol=1e-12):
            self.control(ReduceOrderSize(size_multiplier=size_multiplier))
            self.set(size_multiplier=size_multiplier)

    def outcome(self, reason: str = "") -> Outcome:
        assert not self.controls or self.events, "every control action is recorded by an event"
        state = self.state
        recent_commands = state.recent_commands
        if self.command_id and self.command_id not in recent_commands:
            recent_commands = [*recent_commands, self.command_id][-RECENT_COMMANDS:]
        state = msgspec.structs.replace(
            state,
            outbox_controls=[*state.outbox_controls, *self.controls],
            outbox_events=[*state.outbox_events, *self.events],
            recent_events=[*state.recent_events, *self.events][-RECENT_EVENTS:],
            recent_commands=recent_commands, epoch=self.ctx.epoch, updated_ns=self.ctx.now_ns,
            outbox_endpoint=self.endpoint or state.outbox_endpoint,
        )
        return Outcome(True, reason, state, changed=True)


def _reject(state: RolloutState | None, reason: str) -> Outcome:
    return Outcome(False, reason, state)


# ---------------------------------------------------------------- operator verbs
def handle_command(strategy: str, state: RolloutState | None, command: DeployCommand, ctx: Context,
                   plans: Mapping[str, Plan], digests: Mapping[str, str] | None = None,
                   known: frozenset[str] = frozenset()) -> Outcome:
    """Apply an operator verb, or reject it with a reason and change nothing.

    `known`: the strategies that may be deployed (empty: any valid id).
    """
    if strategy == subjects.ALL_STRATEGIES:  # in control, ALL is every strategy: a rollout is of one
        return _reject(state, f"{strategy!r} names every strategy in control commands: a rollout is of one "
                              "strategy")
    if known and strategy not in known:
        return _reject(state, f"unknown strategy {strategy!r}; known: {sorted(known)}")
    if isinstance(command, GetRolloutStatus):
        if state is None:
            return _reject(None, f"unknown strategy {strategy!r}: no rollout (deploy it first)")
        return Outcome(True, "", state)
    if isinstance(command, Deploy):
        return _deploy(strategy, state, command, ctx, plans, digests or {})
    if state is None:
        return _reject(None, f"unknown strategy {strategy!r}: no rollout (deploy it first)")
    current = phase_name(state)
    if isinstance(command, NEEDS_EXPECTED_PHASE):
        if not command.expected_phase:
            return _reject(state, f"{_verb(command)} needs expected_phase (current phase: {current})")
    # Halt and abort take priority over everything: they never wait on an expected phase.
    if command.expected_phase and command.expected_phase != current and not isinstance(command,
                                                                                       HaltRollout | Abort):
        return _reject(state, f"expected phase {command.expected_phase!r}, current phase is {current!r}")
    draft = _Draft(state, ctx, command.command_id, command.issued_by)
    reason = command.reason
    match command:
        case HaltRollout():
            return _halt(draft, reason or "operator halt")
        case Abort():
            return _abort(draft, reason or "operator abort")
        case Pause():
            if state.status not in SOAK_STATUSES:
                return _reject(state, f"cannot pause a rollout that is {state.status}")
            draft.set(status="PAUSED")
            draft.event("paused", trigger="operator", reason=reason)
            return draft.outcome()
        case ResumeRollout(mode=mode):
            return _resume(draft, mode, reason)
        case Rollback():
            if state.status == "ABORTED":
                return _reject(state, "rollout is aborted: nothing to roll back")
            if state.phase_index < 0:
                return _reject(state, "already below the first phase: nothing to roll back")
            _rollback(draft, trigger="operator", reason=reason or "operator rollback")
            return draft.outcome()
        case Promote(full=full, confirm_live=confirm_live):
            return _operator_promote(draft, full=full, explicit_approval=full, confirm_live=confirm_live)
    raise TypeError(f"unknown deploy command {type(command).__name__}")


def _verb(command: DeployCommand) -> str:
    return type(command).__struct_config__.tag  # type: ignore[no-any-return]


def _deploy(strategy: str, state: RolloutState | None, command: Deploy, ctx: Context, plans: Mapping[str, Plan],
            digests: Mapping[str, str]) -> Outcome:
    if is_active(state):
        assert state is not None
        return _deploy_next(state, command, ctx)
    plan = plans.get(command.plan)
    if plan is None:
        return _reject(state, f"unknown plan {command.plan!r}; known: {sorted(plans)}")
    if command.expected_phase and command.expected_phase != NO_PHASE:
        return _reject(state, f"expected phase {command.expected_phase!r}, but {strategy!r} has no active rollout")
    phases = plan.rollout_phases()
    first = phases[0]
    if command.env and command.env != first.env:
        return _reject(state, f"a rollout of plan {plan.name!r} starts in {first.name!r} ({first.env}): "
                              f"deploy with --env {first.env} first")
    if first.env == "live" and not command.confirm_live:
        return _reject(state, f"plan {plan.name!r} starts live ({first.name!r}): {LIVE_CONFIRMATION}")
    if command.allocation is not None:
        limit = phases[1].allocation if len(phases) > 1 else 1.0
        if command.allocation > limit:
            return _reject(state, f"allocation {command.allocation} is above the next phase's {limit}")
        phases[0] = msgspec.structs.replace(first, allocation=command.allocation)
    ctx = Context(ctx.now_ns, ctx.epoch, plan, ctx.trading, ctx.var_book, ctx.accounts, ctx.rollouts)
    # The account is the strategy's: named by this deploy, or kept from its previous rollout with its budget.
    account = command.account or (state.account if state is not None else "")
    budget = 0.0
    if account:
        asked = command.budget
        if asked is None and state is not None and state.account == account and state.budget > 0:
            asked = state.budget
        budget, refusal = budget_for(ctx.accounts.get(account), account, asked)
        if refusal:
            return _reject(state, f"deploy refused: {refusal}")
    rollout_id = "r" + (command.command_id[:24] or str(ctx.now_ns))
    previous = state
    fresh = RolloutState(
        strategy=strategy, rollout_id=rollout_id, plan=plan.name, plan_digest=digests.get(plan.name, ""),
        phases=phases, phase_index=0, status="SOAKING", allocation=previous.allocation if previous else 0.0,
        defensive=previous.defensive if previous else False,
        size_multiplier=previous.size_multiplier if previous else 1.0, auto=command.auto,
        soak_anchor_ns=ctx.now_ns, phase_started_ns=ctx.now_ns, started_ns=ctx.now_ns,
        recent_commands=previous.recent_commands if previous else [],
        # Effects a previous rollout decided but did not confirm are still carried out.
        outbox_controls=previous.outbox_controls if previous else [],
        outbox_events=previous.outbox_events if previous else [],
        account=account, budget=budget,
    )
    blocker = capital_blocker(fresh, 0, phases[0].allocation, ctx.accounts, ctx.rollouts)
    if blocker:
        return _reject(state, f"deploy refused: {blocker}")
    draft = _Draft(fresh, ctx, command.command_id, command.issued_by)
    before = fresh.allocation
    # Always written: the deployer's entry may not exist yet, and its default (1.0) is not this phase's.
    draft.control(SetAllocation(allocation=phases[0].allocation))
    draft.set(allocation=phases[0].allocation)
    draft.set_controls(defensive=False, size_multiplier=1.0)
    draft.event("deployed", trigger="operator", phase_from=NO_PHASE, allocation_before=before,
                reason=command.reason or f"plan {plan.name}, {len(phases)} phases, auto={command.auto}")
    if command.confirm_live:
        _confirm_live(draft)
    note = ""
    if ctx.trading is not None and ctx.trading.status == "HALTED":
        note = f"deployed, but {strategy} is HALTED ({ctx.trading.reason}): `qmp resume {strategy}` lifts it"
    return draft.outcome(note)


def _deploy_next(state: RolloutState, command: Deploy, ctx: Context) -> Outcome:
    """`deploy --env/--allocation` on an active rollout: a promotion to the next phase, and no further."""
    current = phase_name(state)
    if command.expected_phase and command.expected_phase != current:
        return _reject(state, f"expected phase {command.expected_phase!r}, current phase is {current!r}")
    if command.account and command.account != state.account:
        return _reject(state, f"{state.strategy} trades from account {state.account or '(none)'!r} in this rollout: "
                              "abort it and deploy again to change its account")
    if command.budget is not None and command.budget != state.budget:
        return _reject(state, f"{state.strategy}'s budget is {state.budget:,.2f} in this rollout: abort it and "
                              "deploy again to change it")
    if not command.env and command.allocation is None:
        return _reject(state, f"already deployed (phase {current}, {state.status}); use promote")
    here = state.phases[state.phase_index]
    if command.env == here.env and command.allocation in (None, here.allocation):
        return _reject(state, f"already in phase {current!r} ({here.env}, allocation {here.allocation})")
    index = state.phase_index + 1
    if index >= len(state.phases):
        return _reject(state, f"already in the last phase {current!r}")
    target = state.phases[index]
    if command.env and command.env != target.env:
        return _reject(state, f"the next phase is {target.name!r} ({target.env}), not {command.env}: "
                              "phases are never skipped")
    draft = _Draft(state, ctx, command.command_id, command.issued_by)
    if command.allocation is not None and command.allocation != target.allocation:
        low = here.allocation
        high = state.phases[index + 1].allocation if index + 1 < len(state.phases) else 1.0
        if not low <= command.allocation <= high:
            return _reject(state, f"allocation {command.allocation} for {target.name!r} must be within "
                                  f"[{low}, {high}] (between its neighbours)")
        phases = list(state.phases)
        phases[index] = msgspec.structs.replace(target, allocation=command.allocation)
        draft.set(phases=phases)
    # Naming the allocation of an approval phase is the explicit approval it waits for.
    return _operator_promote(draft, full=False, explicit_approval=command.allocation is not None,
                             confirm_live=command.confirm_live)


def _operator_promote(draft: _Draft, *, full: bool, explicit_approval: bool, confirm_live: bool = False) -> Outcome:
    state = draft.state
    status = state.status
    if status in ("PAUSED", "HALTED", "ROLLED_BACK", "ABORTED"):
        return _reject(state, f"rollout is {status}: resume it first")
    if status == "COMPLETE" or state.phase_index + 1 >= len(state.phases):
        return _reject(state, f"already in the last phase {phase_name(state)!r}")
    target = state.phases[state.phase_index + 1]
    approved = state.approved_full or explicit_approval
    if confirm_live and not state.live_confirmed:
        _confirm_live(draft)
    if status == "HOLDING" or not _soak_done(state):
        if full:
            draft.set(approved_full=True, auto=True)
            draft.event("approval_recorded", trigger="operator",
                        reason="promotion to the last phase approved; phases and soaks still apply")
            return draft.outcome("approval recorded: the rollout walks on as gates and soaks allow")
        if confirm_live:
            return draft.outcome("live trading confirmed: the rollout walks on as gates and soaks allow")
        if status == "HOLDING":
            return _reject(state, f"gates not clean: {state.hold_reason}")
        return _reject(state, f"soak of {phase_name(state)!r} incomplete: {_remaining_text(state)}")
    if target.env == "live" and not draft.state.live_confirmed:
        return _reject(state, f"{target.name!r} is the first live phase: {LIVE_CONFIRMATION}")
    if target.approval and not approved:
        return _reject(state, f"promotion to {target.name!r} waits for an explicit approval: promote --full")
    blocker = _promotion_blocker(draft)
    if blocker:
        return _reject(state, f"promotion refused: {blocker}")
    if full:
        draft.set(approved_full=True, auto=True)
    _promote(draft, trigger="operator")
    return draft.outcome()


LIVE_CONFIRMATION = "live trading needs the operator's confirmation: --confirm-live"


def _confirm_live(draft: _Draft) -> None:
    """Record the operator's confirmation of live trading (in the audit trail, as a deployment event)."""
    draft.set(live_confirmed=True)
    draft.event("live_confirmed", trigger="operator",
                reason="live trading confirmed by the operator (--confirm-live)")


def _halt(draft: _Draft, reason: str) -> Outcome:
    state = draft.state
    draft.control(Halt(reason=f"rollout halt: {reason}"))
    if state.status not in ("HALTED", "ABORTED"):
        draft.set(status="HALTED", halted_from=state.status)
    draft.event("halted", trigger="operator", reason=reason)
    return draft.outcome()


def _abort(draft: _Draft, reason: str) -> Outcome:
    draft.control(Halt(reason=f"rollout aborted: {reason}"))
    draft.set_controls(allocation=0.0)
    draft.set(status="ABORTED", hold_reason="", halted_from="")
    draft.event("aborted", trigger="operator", reason=reason)
    return draft.outcome()


def _resume(draft: _Draft, mode: str, reason: str) -> Outcome:
    state = draft.state
    status = state.status
    if status == "PAUSED":
        draft.set(status="SOAKING", soak_anchor_ns=draft.ctx.now_ns)
        draft.event("resumed", trigger="operator", reason=reason)
        return draft.outcome()
    if status not in ("HALTED", "ROLLED_BACK"):
        return _reject(state, f"nothing to resume: rollout is {status}")
    if state.phase_index < 0:
        return _reject(state, "rolled back below the first phase: deploy again to restart")
    draft.control(Resume(mode=mode))  # type: ignore[arg-type]
    if status == "ROLLED_BACK" or state.halted_from == "ROLLED_BACK":
        # A rolled-back phase proves itself again from the start, without the actions of the failed phase.
        draft.set_controls(defensive=False, size_multiplier=1.0)
        _reset_soak(draft)
    draft.set(status="SOAKING", halted_from="", hold_reason="", soak_anchor_ns=draft.ctx.now_ns)
    draft.event("resumed", trigger="operator", reason=reason or f"resume ({mode})")
    return draft.outcome()


# ---------------------------------------------------------------- transitions
def _reset_soak(draft: _Draft) -> None:
    now = draft.ctx.now_ns
    draft.set(soak_elapsed_ns=0, soak_anchor_ns=now, fills=0, notional_hours=0.0, phase_started_ns=now,
              sticky_actions=[], hold_reason="",
              gates=[msgspec.structs.replace(gate, consecutive_critical=0) for gate in draft.state.gates])


def _promote(draft: _Draft, trigger: str) -> None:
    state = draft.state
    before_name, before_allocation = phase_name(state), state.allocation
    index = state.phase_index + 1
    target = state.phases[index]
    draft.set(phase_index=index, status="SOAKING", approved_full=state.approved_full and index + 1 < len(
        state.phases))
    draft.set_controls(allocation=target.allocation, defensive=False, size_multiplier=1.0)
    _reset_soak(draft)
    draft.event("promoted", trigger=trigger, phase_from=before_name, allocation_before=before_allocation,
                reason=f"{before_name} soaked with clean gates")


def _rollback(draft: _Draft, trigger: str, reason: str) -> None:
    state = draft.state
    before_name, before_allocation = phase_name(state), state.allocation
    index = state.phase_index - 1
    target_allocation = state.phases[index].allocation if index >= 0 else 0.0
    draft.control(Halt(reason=f"rollout rollback: {reason}"))
    # Never raise capital on the way down (an allocation reduced by an action stays reduced).
    draft.set_controls(allocation=min(target_allocation, state.allocation))
    draft.set(phase_index=index, status="ROLLED_BACK", halted_from="", approved_full=False)
    _reset_soak(draft)
    draft.set(hold_reason=reason)
    draft.event("rolled_back", trigger=trigger, phase_from=before_name, allocation_before=before_allocation,
                reason=reason)


def _soak_done(state: RolloutState) -> bool:
    seconds, fills, notional = soak_remaining(state)
    return seconds <= 0.0 and fills <= 0 and notional <= 0.0


def _remaining_text(state: RolloutState) -> str:
    seconds, fills, notional = soak_remaining(state)
    parts = []
    if seconds > 0:
        parts.append(f"{seconds / 3600:.1f}h")
    if fills > 0:
        parts.append(f"{fills} fills")
    if notional > 0:
        parts.append(f"{notional:,.0f} notional-hours")
    return " and ".join(parts) + " to go"


def _promotion_blocker(draft: _Draft) -> str:
    """Return why no promotion may happen now (calendar blackout, portfolio risk budget), or ''."""
    ctx, state = draft.ctx, draft.state
    blackout = ctx.plan.blackout_at(ctx.now_ns)
    if blackout is not None:
        return f"calendar blackout until {blackout.end.isoformat()} ({blackout.reason})"
    index = state.phase_index + 1
    capital = capital_blocker(state, index, state.phases[index].allocation, ctx.accounts, ctx.rollouts)
    if capital:
        return capital
    limit = ctx.plan.portfolio_var_limit
    if limit <= 0.0:
        return ""
    own = ctx.var_book.get(state.strategy)
    if own is None:
        return f"risk budget: no {ctx.plan.portfolio_var_key} VaR for {state.strategy} yet"
    target = state.phases[state.phase_index + 1].allocation
    scale = target / state.allocation if state.allocation > 0 else 1.0
    at_risk = equity = 0.0
    for strategy, (var, strategy_equity) in ctx.var_book.items():
        # VaR without diversification credit: the budget is an upper bound, as a limit should be.
        at_risk += var * strategy_equity * (scale if strategy == state.strategy else 1.0)
        equity += strategy_equity
    projected = at_risk / equity if equity > 0 else math.inf
    if projected > limit:
        return f"risk budget: portfolio VaR would be {projected:.2%} > limit {limit:.2%}"
    return ""


# ---------------------------------------------------------------- gates
def evaluate(state: RolloutState, readings: Mapping[str, Reading], ctx: Context, exposure: float = 0.0) -> Outcome:
    """Evaluate the gates, take their actions, hold, roll back or promote; `exposure` is gross notional."""
    if state.status == "ABORTED":
        return Outcome(True, "", state)
    draft = _Draft(state, ctx)
    _accrue(draft, exposure)
    plan = ctx.plan
    previous = {gate.metric: gate for gate in state.gates}
    specs = plan.enabled_metrics()
    gates = [evaluate_gate(name, spec, readings.get(name, Reading(None, "no_data", 0, "not read")),
                           previous.get(name)) for name, spec in specs.items()]
    draft.set(gates=gates, last_eval_ns=ctx.now_ns)
    for gate in gates:
        before = previous.get(gate.metric)
        if before is None or before.level != gate.level:
            _gate_event(draft, gate, before)
    if state.status in FROZEN_STATUSES:
        return draft.outcome()  # halted: values kept for the status view, no actions
    breaches = [gate for gate in gates
                if gate.level == "critical" and gate.consecutive_critical >= specs[gate.metric].failure_limit]
    if breaches and state.phase_index >= 0:
        worst = breaches[0]
        _rollback(draft, trigger=f"gate {worst.metric} critical",
                  reason=f"{worst.metric} {worst.value:.6g} > critical {worst.critical:g} for "
                         f"{worst.consecutive_critical} evaluation(s)")
        return draft.outcome()
    _take_actions(draft, gates, previous)
    not_ok = [gate for gate in gates if gate.level != "ok"]
    if state.status == "PAUSED":
        return draft.outcome()
    holds = [f"{gate.metric} {gate.level}" + (f" ({gate.detail})" if gate.detail else "") for gate in not_ok]
    if ctx.trading is not None and ctx.trading.status == "HALTED":
        # Halted by someone else (risk, operator): the phase is not being exercised, so it is not soaking.
        holds.append(f"strategy HALTED by {ctx.trading.issued_by or 'a source'}: {ctx.trading.reason}")
    if holds:
        hold = "; ".join(holds)
        if draft.state.status != "HOLDING":
            draft.set(status="HOLDING", hold_reason=hold)
            draft.event("held", trigger="gates", reason=hold)
        else:
            draft.set(hold_reason=hold)
        return draft.outcome()
    if draft.state.status == "HOLDING":
        draft.set(status="SOAKING", hold_reason="")
        draft.event("soak_resumed", trigger="gates", reason="gates clean")
    if ctx.trading is not None and ctx.trading.safe_mode:
        # `resume --safe` runs at half size until the next clean gate evaluation: this one.
        draft.control(ReleaseSafeMode())
        draft.event("safe_mode_released", trigger="gates", reason="clean gate evaluation after a safe resume")
    if draft.state.status == "SOAKING":
        _advance(draft)
    return draft.outcome()


def _accrue(draft: _Draft, exposure: float) -> None:
    state, now = draft.state, draft.ctx.now_ns
    if state.soak_anchor_ns <= 0 or now <= state.soak_anchor_ns:
        draft.set(soak_anchor_ns=max(now, state.soak_anchor_ns))
        return
    elapsed = now - state.soak_anchor_ns
    if state.status == "SOAKING":
        draft.set(soak_elapsed_ns=state.soak_elapsed_ns + elapsed,
                  notional_hours=state.notional_hours + max(exposure, 0.0) * elapsed / NS_PER_HOUR)
    draft.set(soak_anchor_ns=now)


def _gate_event(draft: _Draft, gate: GateResult, before: GateResult | None) -> None:
    was = before.level if before is not None else "unknown"
    value = "no value" if gate.value is None else f"{gate.value:.6g}"
    text = f"{gate.metric} {was} → {gate.level}: {value} (warning {gate.warning:g}, critical {gate.critical:g})"
    if gate.detail:
        text += f"; {gate.detail}"
    draft.event("gate_cleared" if gate.level == "ok" else "alert", trigger=f"gate {gate.metric} {gate.level}",
                reason=text)


def _take_actions(draft: _Draft, gates: list[GateResult], previous: Mapping[str, GateResult]) -> None:
    """Run each breached metric's action once; lift the temporary ones when nothing needs them any more."""
    specs = draft.ctx.plan.enabled_metrics()
    defensive, size_multiplier, backup = False, 1.0, False
    for gate in gates:
        spec = specs[gate.metric]
        breached = gate.level in ("warning", "critical")
        if gate.level == "inconclusive" and gate.reading == "stale" and spec.fail_closed:
            defensive = True  # stale risk data: no new positions until it is fresh again
        if not breached:
            continue
        key = f"{gate.metric}:{spec.action}"
        if spec.action == "reduce_allocation":
            if key not in draft.state.sticky_actions:
                before = draft.state.allocation
                draft.set(sticky_actions=[*draft.state.sticky_actions, key])
                draft.set_controls(allocation=before * spec.action_factor)
                draft.event("action", trigger=f"gate {gate.metric} {gate.level}", allocation_before=before,
                            reason=f"reduce allocation by {1 - spec.action_factor:.0%}")
        elif spec.action == "halt_new_positions":
            defensive = True
        elif spec.action == "reduce_order_size":
            size_multiplier = min(size_multiplier, spec.action_factor)
        elif spec.action == "switch_endpoint":
            backup = True
        else:
            was = previous.get(gate.metric)
            if was is None or was.level != gate.level:
                draft.event("action", trigger=f"gate {gate.metric} {gate.level}",
                            reason=f"{spec.action} requested: advisory, no actuator in the control contract; "
                                   "operator action needed")
    state = draft.state
    if defensive != state.defensive or not math.isclose(size_multiplier, state.size_multiplier):
        what = []
        if defensive != state.defensive:
            what.append("halt new positions" if defensive else "allow new positions")
        if not math.isclose(size_multiplier, state.size_multiplier):
            what.append(f"order size × {size_multiplier:g}")
        draft.set_controls(defensive=defensive, size_multiplier=size_multiplier)
        draft.event("action", trigger="gates", reason=", ".join(what))
    if backup != state.endpoint_backup:
        # The broker endpoint belongs to the execution instance, not the strategy: pinned while the breach lasts.
        draft.endpoint = "backup" if backup else "auto"
        draft.set(endpoint_backup=backup)
        draft.event("action", trigger="gates", reason="switch the broker to its backup endpoint" if backup
                    else "broker endpoint back to its automatic choice")


def _advance(draft: _Draft) -> None:
    """A clean evaluation in SOAKING: promote, or wait for approval or an operator, once the soak is done."""
    state = draft.state
    if not _soak_done(state):
        return
    if state.phase_index + 1 >= len(state.phases):
        draft.set(status="COMPLETE")
        draft.event("completed", trigger="soak", reason=f"{phase_name(state)} soaked with clean gates")
        return
    target = state.phases[state.phase_index + 1]
    blocker = _promotion_blocker(draft)
    if blocker:
        # One event per kind of blocker, not one per evaluation (the projected VaR moves every time).
        if state.hold_reason.split(":")[0] != blocker.split(":")[0]:
            draft.set(hold_reason=blocker)
            draft.event("promotion_blocked", trigger="soak", reason=blocker)
        draft.set(hold_reason=blocker)
        return
    if target.env == "live" and not state.live_confirmed:
        draft.set(status="AWAITING_APPROVAL", hold_reason=f"{target.name}: {LIVE_CONFIRMATION}")
        draft.event("awaiting_approval", trigger="soak",
                    reason=f"{target.name} is the first live phase: {LIVE_CONFIRMATION}")
        return
    if target.approval and not state.approved_full:
        draft.set(status="AWAITING_APPROVAL", hold_reason="")
        draft.event("awaiting_approval", trigger="soak", reason=f"promotion to {target.name} needs approval")
        return
    if not state.auto:
        draft.set(status="READY", hold_reason="")
        draft.event("ready", trigger="soak", reason=f"{phase_name(state)} soaked: promote when ready")
        return
    draft.set(hold_reason="")
    _promote(draft, trigger="soak complete, gates clean")


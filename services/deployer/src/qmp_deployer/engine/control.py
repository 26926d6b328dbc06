"""Control state: decide what a control command does to each source's entry; no I/O.

Each source (operator, risk, deployer) owns one entry per strategy; `ALL` entries apply to every
strategy. A halt is latched in the issuing source's entry; only a resume (operator or deployer) clears
halts, in every source's entry of that strategy (`ALL` included when the target is `ALL`).

Commands that arrive together are decided together (`decide_in_order`): each on the entries as the ones
before it left them, so a batch writes each changed entry once and every reply still tells the state
right after its own command.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from qmp_core import subjects, trading_state
from qmp_core.messages import ControlCommand, Halt, ReleaseSafeMode, Resume, TradingState
from qmp_core.trading_state import ControlEntries

RESUMERS = frozenset({"operator", "deployer"})


@dataclass(frozen=True)
class ControlDecision:
    accepted: bool
    reason: str
    changed: dict[str, TradingState] = field(default_factory=dict)  # key -> new entry
    effective: TradingState | None = None


def entry_keys(strategy: str) -> list[str]:
    return [subjects.control_key(strategy, source) for source in trading_state.SOURCES]


def decide(
    strategy: str, command: ControlCommand, entries: Mapping[str, TradingState], ts_event: int,
    traceparent: str = "",
) -> ControlDecision:
    """Return the entries a command changes and the effective state after it, or a rejection; each changed
    entry records the command's trace context."""
    source = command.issued_by
    if isinstance(command, Resume | ReleaseSafeMode) and source not in RESUMERS:
        return ControlDecision(False, f"{type(command).__name__} may be issued by {sorted(RESUMERS)}, "
                                      f"not {source!r}")
    changed: dict[str, TradingState] = {}
    own_key = subjects.control_key(strategy, source)
    own = entries.get(own_key, TradingState(strategy=strategy, issued_by=source))
    if isinstance(command, Resume | ReleaseSafeMode):
        # A resume clears every source's latched halt; both clear a previous safe mode wherever it sits.
        clears_halt = isinstance(command, Resume)
        for key in entry_keys(strategy):
            entry = entries.get(key)
            if entry is None or key == own_key:
                continue
            halted = clears_halt and entry.status == "HALTED"
            if halted or entry.safe_mode:
                changed[key] = msgspec.structs.replace(
                    entry,
                    status="ACTIVE" if halted else entry.status,
                    reason="" if halted else entry.reason,
                    kill_id="" if halted else entry.kill_id,
                    flatten=False if halted else entry.flatten,
                    safe_mode=False,
                    issued_by=source, command_id=command.command_id, ts_event=ts_event, traceparent=traceparent,
                )
    changed[own_key] = trading_state.apply(own, command, ts_event, traceparent)
    merged = {**entries, **changed}
    return ControlDecision(True, "", changed, trading_state.effective_state(strategy, merged))


@dataclass(frozen=True)
class ControlRequest:
    """A command for a strategy; `arrival` numbers bus requests as they arrive (None: in-process writes)."""

    strategy: str
    command: ControlCommand
    arrival: int | None = None
    traceparent: str = ""  # the W3C trace context the command came in (recorded in the entries it changes)


@dataclass(frozen=True)
class BatchDecision:
    decisions: list[ControlDecision]  # one per request, in order; a refusal carries the state it met
    changed: dict[str, TradingState]  # key -> the entry to write after the whole batch
    halt_arrivals: dict[str, int]  # strategy -> arrival number of the last halt applied, after the batch


def overtaken_by_halt(request: ControlRequest, halt_arrivals: Mapping[str, int]) -> str:
    """Return why a resume is refused when a halt that arrived after it was applied first, else "".

    Halts go to the bucket ahead of other commands, so a halt can overtake a resume sent before it: such
    a resume is refused, never applied after the halt.
    """
    if request.arrival is None or not isinstance(request.command, Resume | ReleaseSafeMode):
        return ""
    later = max(halt_arrivals.get(request.strategy, -1), halt_arrivals.get(subjects.ALL_STRATEGIES, -1))
    if later > request.arrival:
        return (f"a halt sent after this {type(request.command).__name__.lower()} was applied first: it stays; "
                "send the resume again to lift it")
    return ""


def decide_in_order(requests: Sequence[ControlRequest], entries: ControlEntries, halt_arrivals: Mapping[str, int],
                    ts_event: int) -> BatchDecision:
    """Decide requests one after the other, each on the entries the ones before it left."""
    view = entries.copy()
    arrivals = dict(halt_arrivals)
    changed: dict[str, TradingState] = {}
    decisions: list[ControlDecision] = []
    for request in requests:
        strategy, command = request.strategy, request.command
        overtaken = overtaken_by_halt(request, arrivals)
        decision = (ControlDecision(False, overtaken) if overtaken
                    else decide(strategy, command, view.relevant(strategy), ts_event, request.traceparent))
        if not decision.accepted:
            decisions.append(ControlDecision(False, decision.reason, effective=view.effective(strategy)))
            continue
        for key, state in decision.changed.items():
            view.set_entry(key, state)
        changed.update(decision.changed)
        if isinstance(command, Halt) and request.arrival is not None:
            arrivals[strategy] = max(request.arrival, arrivals.get(strategy, -1))
        decisions.append(decision)
    return BatchDecision(decisions, changed, arrivals)

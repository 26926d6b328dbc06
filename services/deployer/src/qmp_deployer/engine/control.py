"""Control state: decide what a control command does to each source's entry; no I/O.

Each source (operator, risk, deployer) owns one entry per strategy; `ALL` entries apply to every
strategy. A halt is latched in the issuing source's entry; only a resume (operator or deployer) clears
halts, in every source's entry of that strategy (`ALL` included when the target is `ALL`).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from qmp_core import subjects, trading_state
from qmp_core.messages import ControlCommand, ReleaseSafeMode, Resume, TradingState

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
    strategy: str, command: ControlCommand, entries: Mapping[str, TradingState], ts_event: int
) -> ControlDecision:
    """Return the entries a command changes and the effective state after it, or a rejection."""
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
                    safe_mode=False,
                    issued_by=source, command_id=command.command_id, ts_event=ts_event,
                )
    changed[own_key] = trading_state.apply(own, command, ts_event)
    merged = {**entries, **changed}
    return ControlDecision(True, "", changed, trading_state.effective_state(strategy, merged))

"""Trading state per strategy: each source owns one entry; the effective state is the most restrictive.

No writer can loosen another's limit: status takes the most severe, allocation, size multiplier and
order cap take the minimum, defensive is on if any source turns it on.
"""

from collections.abc import Iterable

import msgspec

from qmp_core.messages import (
    ControlCommand,
    Defensive,
    Halt,
    ReduceOrderSize,
    ReleaseSafeMode,
    Resume,
    SetAllocation,
    TradingState,
)

SEVERITY = {"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}
SAFE_MODE_SIZE = 0.5


def combine(strategy: str, entries: Iterable[TradingState]) -> TradingState:
    """Return the effective state of a strategy from its sources' entries (and the ALL entries)."""
    effective = TradingState(strategy=strategy)
    for entry in entries:
        worse = SEVERITY[entry.status] > SEVERITY[effective.status]
        effective = msgspec.structs.replace(
            effective,
            status=entry.status if worse else effective.status,
            reason=entry.reason if worse else effective.reason,
            allocation=min(effective.allocation, entry.allocation),
            size_multiplier=min(effective.size_multiplier, entry.size_multiplier),
            max_order_fraction=min(effective.max_order_fraction, entry.max_order_fraction),
            defensive=effective.defensive or entry.defensive,
            safe_mode=effective.safe_mode or entry.safe_mode,
            updated_by=entry.updated_by if entry.ts_event >= effective.ts_event else effective.updated_by,
            command_id=entry.command_id if entry.ts_event >= effective.ts_event else effective.command_id,
            ts_event=max(effective.ts_event, entry.ts_event),
        )
    if effective.defensive and effective.status == "ACTIVE":
        effective = msgspec.structs.replace(effective, status="REDUCING", reason="defensive mode")
    return effective


def apply(entry: TradingState, command: ControlCommand, ts_event: int) -> TradingState:
    """Return a source's entry after a command. Resume is applied across sources by the caller."""
    common = {"updated_by": command.issued_by, "command_id": command.command_id, "ts_event": ts_event}
    match command:
        case Halt(reason=reason):
            return msgspec.structs.replace(entry, status="HALTED", reason=reason, **common)
        case Resume(mode=mode):
            safe = mode == "safe"
            return msgspec.structs.replace(
                entry,
                status="ACTIVE",
                reason="resumed (safe mode)" if safe else "",
                safe_mode=safe,
                size_multiplier=SAFE_MODE_SIZE if safe else 1.0,
                **common,
            )
        case ReleaseSafeMode():
            if not entry.safe_mode:
                return entry
            return msgspec.structs.replace(entry, safe_mode=False, size_multiplier=1.0, reason="", **common)
        case SetAllocation(allocation=allocation):
            return msgspec.structs.replace(entry, allocation=allocation, **common)
        case ReduceOrderSize(factor=factor):
            return msgspec.structs.replace(entry, size_multiplier=factor, **common)
        case Defensive(on=on, max_order_fraction=cap):
            # The cap holds only while defensive; turning it off lifts this source's cap.
            return msgspec.structs.replace(entry, defensive=on, max_order_fraction=cap if on else 1.0, **common)
    raise TypeError(f"unknown control command {type(command).__name__}")

"""Trading state per strategy: each source owns one entry; the effective state is the most restrictive.

No writer can loosen another's limit: status takes the most severe, allocation, size multiplier and
order cap take the minimum, defensive is on if any source turns it on, and safe mode (after a
`resume --safe`, until a clean gate evaluation releases it) caps the size multiplier at SAFE_MODE_SIZE on
top of every source's own cut, which it never overwrites. This module is the one home of
that rule: the deployer (which owns the state), execution (which enforces it) and `qmp status` (which
shows it) all read the control bucket through `ControlEntries`.

A bucket value that is not a TradingState fails safe: it reads as HALTED, with the reason, and
`ControlEntries.put` returns that reason so the reader can dead-letter the value. A corrupt limit must
never read as no limit, nor as whatever the entry said before.
"""

import logging
from collections.abc import Iterable, Iterator, Mapping

import msgspec

from qmp_core import subjects
from qmp_core.messages import (
    ControlCommand,
    Defensive,
    Halt,
    Kill,
    ReduceOrderSize,
    ReleaseSafeMode,
    Resume,
    SetAllocation,
    TradingState,
)

log = logging.getLogger(__name__)
SEVERITY = {"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}
SAFE_MODE_SIZE = 0.5
SOURCES = ("operator", "risk", "deployer")  # who owns an entry; the order in which entries are combined
SERVICE_SOURCES = ("risk", "deployer")  # the services that own an entry; every other sender is an operator


def source_of(sender: str) -> str:
    """Return the entry a sender's commands write: its own when it is risk or the deployer, else the operators'.

    Operators are people, each with their own NATS user (the admin `operator` among them); they share one
    entry, and the audit records which of them sent each command.
    """
    return sender if sender in SERVICE_SOURCES else "operator"


def combine(strategy: str, entries: Iterable[TradingState]) -> TradingState:
    """Return the effective state of a strategy from its sources' entries (and the ALL entries)."""
    effective = TradingState(strategy=strategy)
    kill_ts = 0
    defensive_trace, defensive_ts = "", -1  # the trace of the latest command that made a source defensive
    for entry in entries:
        if entry.defensive and entry.ts_event >= defensive_ts:
            defensive_trace, defensive_ts = entry.traceparent, entry.ts_event
        worse = SEVERITY[entry.status] > SEVERITY[effective.status]
        effective = msgspec.structs.replace(
            effective,
            status=entry.status if worse else effective.status,
            reason=entry.reason if worse else effective.reason,
            traceparent=entry.traceparent if worse else effective.traceparent,
            allocation=min(effective.allocation, entry.allocation),
            size_multiplier=min(effective.size_multiplier, entry.size_multiplier),
            max_order_fraction=min(effective.max_order_fraction, entry.max_order_fraction),
            defensive=effective.defensive or entry.defensive,
            safe_mode=effective.safe_mode or entry.safe_mode,
            issued_by=entry.issued_by if entry.ts_event >= effective.ts_event else effective.issued_by,
            command_id=entry.command_id if entry.ts_event >= effective.ts_event else effective.command_id,
            ts_event=max(effective.ts_event, entry.ts_event),
        )
        if entry.kill_id and entry.status == "HALTED" and (not effective.kill_id or entry.ts_event >= kill_ts):
            # The latest kill in force is the one execution acts on; any of them asking to flatten flattens.
            effective = msgspec.structs.replace(effective, kill_id=entry.kill_id,
                                                flatten=effective.flatten or entry.flatten)
            kill_ts = entry.ts_event
        elif entry.kill_id and entry.status == "HALTED":
            effective = msgspec.structs.replace(effective, flatten=effective.flatten or entry.flatten)
    if effective.safe_mode and effective.size_multiplier > SAFE_MODE_SIZE:
        # Safe mode is a state of its own, not a value written over a source's size cut: the cut outlives it.
        effective = msgspec.structs.replace(effective, size_multiplier=SAFE_MODE_SIZE)
    if effective.defensive and effective.status == "ACTIVE":
        effective = msgspec.structs.replace(effective, status="REDUCING", reason="defensive mode",
                                            traceparent=defensive_trace)
    return effective


def grows_exposure(quantity: float, position: float) -> bool:
    """Return True when a signed order quantity would grow |position| (what REDUCING refuses).

    From flat every order grows exposure; against a position, only an order on the other side shrinks it
    (one that also flips the position is trimmed to the position by the gate, not refused).
    """
    return position == 0.0 or (quantity > 0.0) == (position > 0.0)


def strategy_of(key: str) -> str:
    """Return the strategy (or `ALL`) a control bucket key `<strategy>.<source>` applies to."""
    return key.partition(".")[0]


def effective_state(strategy: str, entries: Mapping[str, TradingState]) -> TradingState:
    """Return the strategy's effective state: its own entries and the `ALL` entries, most restrictive wins.

    Entries are combined in a fixed order (the strategy's before `ALL`'s, sources in SOURCES order, then
    any other key), so the reason and author shown for a tie never depend on arrival order.
    """
    owners = [strategy] if strategy == subjects.ALL_STRATEGIES else [strategy, subjects.ALL_STRATEGIES]
    rank = {source: i for i, source in enumerate(SOURCES)}
    ordered: list[TradingState] = []
    for owner in owners:
        keys = [key for key in entries if strategy_of(key) == owner]
        keys.sort(key=lambda key: (rank.get(key.partition(".")[2], len(rank)), key))
        ordered += [entries[key] for key in keys]
    return combine(strategy, ordered)


class ControlEntries(Mapping[str, TradingState]):
    """The control bucket's entries in memory (`<strategy>.<source>` → TradingState), read fail-safe.

    Entries are also indexed by the strategy they apply to, so that a strategy's effective state reads
    only its own and the `ALL` entries, however many strategies the bucket holds.
    """

    def __init__(self) -> None:
        self._entries: dict[str, TradingState] = {}
        self._by_owner: dict[str, dict[str, TradingState]] = {}
        self._decoder = msgspec.json.Decoder(TradingState)

    def put(self, key: str, value: bytes) -> str | None:
        """Store a bucket value; return why it is not a TradingState (it then reads as HALTED), else None."""
        try:
            self.set_entry(key, self._decoder.decode(value))
            return None
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            reason = f"invalid control entry {key}: {error}"
            log.error("invalid control entry: the strategy reads as HALTED", extra={"key": key, "error": reason})
            self.set_entry(key, TradingState(strategy=strategy_of(key), status="HALTED", reason=reason))
            return reason

    def set_entry(self, key: str, entry: TradingState) -> None:
        self._entries[key] = entry
        self._by_owner.setdefault(strategy_of(key), {})[key] = entry

    def delete(self, key: str) -> None:
        self._entries.pop(key, None)
        owned = self._by_owner.get(strategy_of(key))
        if owned is not None:
            owned.pop(key, None)
            if not owned:
                del self._by_owner[strategy_of(key)]

    def relevant(self, strategy: str) -> dict[str, TradingState]:
        """Return the entries that make the strategy's effective state: its own and the `ALL` entries."""
        found = dict(self._by_owner.get(strategy, {}))
        if strategy != subjects.ALL_STRATEGIES:
            found.update(self._by_owner.get(subjects.ALL_STRATEGIES, {}))
        return found

    def effective(self, strategy: str) -> TradingState:
        return effective_state(strategy, self.relevant(strategy))

    def strategies(self) -> set[str]:
        """Return every strategy (and `ALL`) that has at least one entry."""
        return set(self._by_owner)

    def copy(self) -> "ControlEntries":
        copied = ControlEntries()
        copied._entries = dict(self._entries)
        copied._by_owner = {owner: dict(owned) for owner, owned in self._by_owner.items()}
        return copied

    def __getitem__(self, key: str) -> TradingState:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


def apply(entry: TradingState, command: ControlCommand, ts_event: int, traceparent: str = "") -> TradingState:
    """Return a source's entry after a command (sent in the trace `traceparent`). Resume is applied across
    sources by the caller."""
    common = {"issued_by": command.issued_by, "command_id": command.command_id, "ts_event": ts_event,
              "traceparent": traceparent}
    match command:
        case Kill(reason=reason, flatten=flatten):
            return msgspec.structs.replace(entry, status="HALTED", reason=reason, kill_id=command.command_id,
                                           flatten=flatten, **common)
        case Halt(reason=reason):
            return msgspec.structs.replace(entry, status="HALTED", reason=reason, kill_id="", flatten=False,
                                           **common)
        case Resume(mode=mode):
            safe = mode == "safe"
            # A resume lifts the halt, never the source's order-size cut (that takes a reduce_order_size).
            return msgspec.structs.replace(
                entry, status="ACTIVE", reason="resumed (safe mode)" if safe else "", safe_mode=safe, kill_id="",
                flatten=False, **common,
            )
        case ReleaseSafeMode():
            if not entry.safe_mode:
                return entry
            return msgspec.structs.replace(entry, safe_mode=False, reason="", **common)
        case SetAllocation(allocation=allocation):
            return msgspec.structs.replace(entry, allocation=allocation, **common)
        case ReduceOrderSize(size_multiplier=multiplier):
            return msgspec.structs.replace(entry, size_multiplier=multiplier, **common)
        case Defensive(on=on, max_order_fraction=cap):
            # The cap holds only while defensive; turning it off lifts this source's cap.
            return msgspec.structs.replace(entry, defensive=on, max_order_fraction=cap if on else 1.0, **common)
    raise TypeError(f"unknown control command {type(command).__name__}")

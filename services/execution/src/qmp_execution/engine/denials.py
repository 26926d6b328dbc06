"""Repeated denials under one trading state, published once per symbol, with a count.

A halted strategy is denied every order it wants, every batch: 50 symbols × a batch a second is 50
events a second saying the same thing, on a stream kept for a year. Under one stopping state (same
status, reason and last command), the first denial of a symbol is published as it happens; the repeats
are counted, and when the state changes, one more denial per symbol carries their count
(`OrderDenied.count`). A new command counts as a change even between two batches (halt, resume, halt).
Denials that do not come from the trading state (cash, notional, price band) are always published.
"""

from dataclasses import dataclass, field

import msgspec

from qmp_core.messages import OrderDenied, OrderEvent, TradingState
from qmp_execution.engine.codes import CODE_HALTED, CODE_REDUCING

STATE_CODES = frozenset({CODE_HALTED, CODE_REDUCING})


@dataclass
class _Repeats:
    count: int
    last: OrderDenied


@dataclass
class RepeatedDenials:
    """Which trading-state denials to publish now; the rest are counted until the state changes."""

    state: tuple[str, str, str] = ("ACTIVE", "", "")
    published: set[str] = field(default_factory=set)  # symbols whose first denial under `state` is out
    repeats: dict[str, _Repeats] = field(default_factory=dict)

    def select(self, state: TradingState, events: list[OrderEvent]) -> list[OrderEvent]:
        """Return the events to publish: the counts of the previous state (when it changed), then `events`
        without the repeated trading-state denials."""
        out: list[OrderEvent] = []
        key = (state.status, state.reason, state.command_id)
        if key != self.state:
            out.extend(self.flush())
            self.state = key
        for event in events:
            if isinstance(event, OrderDenied) and event.reason_code in STATE_CODES:
                if event.symbol in self.published:
                    held = self.repeats.get(event.symbol)
                    self.repeats[event.symbol] = _Repeats(1 if held is None else held.count + 1, event)
                    continue
                self.published.add(event.symbol)
            out.append(event)
        return out

    def flush(self) -> list[OrderDenied]:
        """Return one denial per symbol with the count of its repeats, and forget them."""
        counted = [msgspec.structs.replace(held.last, count=held.count, reason=f"{held.last.reason} "
                                           f"({held.count} repeated denials)")
                   for _, held in sorted(self.repeats.items())]
        self.published.clear()
        self.repeats.clear()
        return counted

"""Follow a strategy's run over the bus: risk snapshots, order decisions, fills, breaker events."""

import json
from dataclasses import dataclass, field
from typing import Any

import nats

from qmp_core import subjects


@dataclass
class RunObserver:
    """Collect what a run publishes for one strategy (core subscriptions on the stream subjects)."""

    strategy: str
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    accepted: int = 0
    denied: int = 0
    denial_reasons: dict[str, int] = field(default_factory=dict)
    fills: int = 0
    slippage_bps: list[float] = field(default_factory=list)
    breaker_events: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[tuple[int, bool]] = field(default_factory=list)  # (ts_event, accepted)
    fill_records: list[tuple[int, float]] = field(default_factory=list)  # (ts_event, slippage_bps)
    _subscriptions: list[Any] = field(default_factory=list)

    async def start(self, nc: nats.NATS) -> None:
        self._subscriptions = [
            await nc.subscribe(subjects.snapshot(self.strategy), cb=self._on_snapshot, pending_msgs_limit=-1),
            await nc.subscribe(subjects.orders(self.strategy), cb=self._on_order, pending_msgs_limit=-1),
            await nc.subscribe(subjects.fills(self.strategy), cb=self._on_fill, pending_msgs_limit=-1),
            await nc.subscribe(subjects.breaker_events(self.strategy), cb=self._on_breaker),
        ]

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()

    @property
    def last_ts(self) -> int:
        """Return the newest event time among the snapshots seen (they may arrive out of order)."""
        return max((snapshot["ts_event"] for snapshot in self.snapshots), default=0)

    async def _on_snapshot(self, msg: Any) -> None:
        self.snapshots.append(json.loads(msg.data))

    async def _on_order(self, msg: Any) -> None:
        decision = json.loads(msg.data)
        event = decision.get("event")
        if event == "OrderDenied":
            self.denied += 1
            code = decision.get("reason_code") or decision.get("reason", "")
            self.denial_reasons[code] = self.denial_reasons.get(code, 0) + 1
        elif event == "OrderAccepted":
            self.accepted += 1
        else:  # cancels and replacements are neither
            return
        self.decisions.append((decision["ts_event"], event == "OrderAccepted"))

    async def _on_fill(self, msg: Any) -> None:
        fill = json.loads(msg.data)
        self.fills += 1
        self.slippage_bps.append(float(fill.get("slippage_bps", 0.0)))
        self.fill_records.append((fill["ts_event"], float(fill.get("slippage_bps", 0.0))))

    async def _on_breaker(self, msg: Any) -> None:
        self.breaker_events.append(json.loads(msg.data))

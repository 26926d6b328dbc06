"""Replays through the whole stack: follow what one strategy's run publishes until the replay is done.

`qmp demo` and the black_swan verification both start a fresh stack in replay mode and watch it: one
observer (`RunObserver`) and one loop (`follow`) that stops at a condition, fails fast when a service
dies, and gives up when no risk snapshot arrives for `stall_timeout_s`.
"""

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats

from qmp_core import subjects
from qmp_core.clock import NS_PER_DAY, iso_date
from qmp_core.dedup import RecentIds
from qmp_lab.verify.core import VerificationError
from qmp_ops.runtime.supervisor import Stack, StackOptions

STALL_TIMEOUT_S = 90.0
SEEN_IDS = 200_000  # message ids remembered: a republish follows its first publish within seconds
MSG_ID = "Nats-Msg-Id"


class ReplayFailed(RuntimeError):
    """A service died during the replay, or the replay stalled."""


@dataclass
class RunObserver:
    """Collect what a run publishes for one strategy (core subscriptions on the stream subjects).

    Every stream message carries a `Nats-Msg-Id`; a publisher that lost a stream's ack (a nats-server
    restart) publishes again with the same id, which the stream drops and a core subscriber sees: each
    id is counted once.
    """

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
    model_slippage_bps: list[float | None] = field(default_factory=list)  # each fill's model prediction, in order
    es_keys: list[str] = field(default_factory=list)  # the ES key that sized each accepted order, where one did
    repeats: int = 0  # messages seen again under an id already counted
    _subscriptions: list[Any] = field(default_factory=list)
    _seen: RecentIds[str] = field(default_factory=lambda: RecentIds(SEEN_IDS))

    async def start(self, nc: nats.NATS) -> None:
        self._subscriptions = [
            await nc.subscribe(subjects.snapshot(self.strategy), cb=self._on_snapshot, pending_msgs_limit=-1),
            await nc.subscribe(subjects.orders(self.strategy), cb=self._on_order, pending_msgs_limit=-1),
            await nc.subscribe(subjects.fills(self.strategy), cb=self._on_fill, pending_msgs_limit=-1),
            await nc.subscribe(subjects.batch_events(self.strategy), cb=self._on_batch_events, pending_msgs_limit=-1),
            await nc.subscribe(subjects.breaker_events(self.strategy), cb=self._on_breaker),
        ]
        await nc.flush()  # the server holds the subscriptions when start returns: nothing published after is missed

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()

    @property
    def last_ts(self) -> int:
        """Return the newest event time among the snapshots seen (they may arrive out of order)."""
        return max((snapshot["ts_event"] for snapshot in self.snapshots), default=0)

    def _first_time(self, msg: Any) -> bool:
        msg_id = (msg.headers or {}).get(MSG_ID)
        if msg_id is None or self._seen.first_time(f"{msg.subject}|{msg_id}"):
            return True
        self.repeats += 1
        return False

    async def _on_snapshot(self, msg: Any) -> None:
        if not self._first_time(msg):
            return
        self.snapshots.append(json.loads(msg.data))

    async def _on_order(self, msg: Any) -> None:
        if self._first_time(msg):
            self._count_order(json.loads(msg.data))

    async def _on_fill(self, msg: Any) -> None:
        if self._first_time(msg):
            self._count_fill(json.loads(msg.data))

    async def _on_batch_events(self, msg: Any) -> None:
        """A replay's orders and fills of a batch in one message (execution's `order_events = per_batch`)."""
        if not self._first_time(msg):
            return
        events = json.loads(msg.data)
        for decision in events.get("decisions", []):
            self._count_order(decision)
        for fill in events.get("fills", []):
            self._count_fill(fill)

    def _count_order(self, decision: dict[str, Any]) -> None:
        event = decision.get("event")
        if event == "OrderDenied":
            count = int(decision.get("count", 1))  # repeats under one trading state come as one, counted
            self.denied += count
            code = decision.get("reason_code") or decision.get("reason", "")
            self.denial_reasons[code] = self.denial_reasons.get(code, 0) + count
        elif event == "OrderAccepted":
            self.accepted += 1
            if decision.get("es_key"):
                self.es_keys.append(decision["es_key"])
        else:  # cancels and replacements are neither
            return
        self.decisions.append((decision["ts_event"], event == "OrderAccepted"))

    def _count_fill(self, fill: dict[str, Any]) -> None:
        self.fills += 1
        self.slippage_bps.append(float(fill.get("slippage_bps", 0.0)))
        self.fill_records.append((fill["ts_event"], float(fill.get("slippage_bps", 0.0))))
        model = fill.get("model_slippage_bps")
        self.model_slippage_bps.append(None if model is None else float(model))

    async def _on_breaker(self, msg: Any) -> None:
        if not self._first_time(msg):
            return
        self.breaker_events.append(json.loads(msg.data))


async def follow(stack: Stack, observer: RunObserver, done: Callable[[RunObserver], bool],
                 on_snapshot: Callable[[RunObserver], None] | None = None,
                 stall_timeout_s: float = STALL_TIMEOUT_S) -> None:
    """Wait until `done(observer)`, calling `on_snapshot` as snapshots arrive; ReplayFailed on a death or a stall."""
    seen, last_change = len(observer.snapshots), time.monotonic()
    while not done(observer):
        await asyncio.sleep(0.1)
        if len(observer.snapshots) != seen:
            seen, last_change = len(observer.snapshots), time.monotonic()
            if on_snapshot is not None:
                on_snapshot(observer)
        dead = stack.dead_services()
        if dead:
            raise ReplayFailed(f"{dead[0]} died during the replay:\n{stack.log_tail(dead[0])}")
        if time.monotonic() - last_change > stall_timeout_s:
            raise ReplayFailed(f"no risk snapshot for {stall_timeout_s:.0f}s after {seen}; logs in "
                               f"{stack.run_dir / 'logs'}")


def stack_replay(strategy_id: str, service_env: dict[str, dict[str, str]], home: Path, until_day_ns: int,
                 log: Callable[[str], None]) -> RunObserver:
    """Replay through a fresh stack until risk has published the day `until_day_ns`; return what was seen.

    This is the `StackReplay` the verification suite's black_swan test runs its crises with.
    """
    # A replay's orders and fills go as one message per batch (the observer reads either way).
    service_env = {**service_env, "execution": {"QMP_ORDER_EVENTS": "per_batch", **service_env.get("execution", {})}}
    stack = Stack(StackOptions(home=home, clock="replay", fresh=True, service_env=service_env))

    def reached(observer: RunObserver) -> bool:
        return bool(observer.snapshots) and observer.last_ts - observer.last_ts % NS_PER_DAY >= until_day_ns

    def progress(observer: RunObserver) -> None:
        if len(observer.snapshots) % 250 == 0:
            log(f"replay: {iso_date(observer.last_ts)} ({len(observer.snapshots)} snapshots)")

    async def run() -> RunObserver:
        observer = RunObserver(strategy_id)
        nc = await stack.connection.connect(follow=True)
        await observer.start(nc)
        try:
            await stack.start_services()
            await follow(stack, observer, reached, progress)
        finally:
            await observer.stop()
            await nc.close()
        return observer

    try:
        stack.start_servers()
        return asyncio.run(run())
    except ReplayFailed as error:
        raise VerificationError(str(error)) from error
    finally:
        stack.stop()

"""The kill switch at the venue: a kill in the control bucket acted on at once, and reported.

A `kill` control command (a halt that also withdraws and optionally flattens) reaches execution through
the control bucket's watch. For each hosted strategy under a kill it has not acted on, `KillSwitch`
withdraws every working order in the engine (now, not at the next batch), cancels each at the venue
(the orders withdrawn earlier that the venue may still hold too, and any open order of the strategy the
venue lists that the books do not know), sends the flatten's closing orders, asks the venue what is still
open, publishes the order events and the book, and then a `KillReport` on `qmp.exec.<strategy>.kill`: the
answer `qmp kill` waits for. Batches wait meanwhile (the market-data handler's lock), so no order of the
strategy is sent between the withdrawal and the report.

A restart finds the kill still in the bucket and acts on it again: the venue's orders are withdrawn again
(a no-op where none is left) and positions still held are closed again.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from qmp_core import subjects
from qmp_core.messages import KillReport, OrderAccepted, OrderCanceled, TradingState, encode
from qmp_execution.adapters import submit_all
from qmp_execution.engine import BatchResult, ExecutionEngine, StrategyResult
from qmp_execution.engine.broker import BrokerOrder, OrderAck, broker_order
from qmp_execution.handlers.bars import BarHandler
from qmp_execution.handlers.constants import PUBLISH_TIMEOUT_S
from qmp_execution.rest import BrokerRejected, BrokerUnavailable

log = logging.getLogger(__name__)

ENDED = frozenset({"filled", "canceled", "rejected", "unknown"})
KILLS_KEPT = 4096  # kill ids acted on, remembered so that a bucket write that repeats one does not act twice


class KillSwitch:
    """Acts on every kill in force that it has not acted on yet; one strategy's kill at a time."""

    def __init__(self, bars: BarHandler, broker: str) -> None:
        self.bars = bars
        self.engine: ExecutionEngine = bars.engine
        self.broker = broker
        self.done: dict[tuple[str, str], None] = {}  # (strategy, kill id) acted on (insertion-ordered, bounded)
        self.reports: list[KillReport] = []  # the latest few, for health
        self._tasks: set[asyncio.Task[Any]] = set()

    def check(self) -> None:
        """Start acting on every kill now in force that has not been acted on (called on each bucket change)."""
        for sid, state in self.engine.kills_due(self.done):
            self._remember((sid, state.kill_id))
            task = asyncio.create_task(self.kill(sid, state), name=f"execution-kill-{sid}")
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("kill failed", exc_info=task.exception())

    def _remember(self, key: tuple[str, str]) -> None:
        self.done[key] = None
        while len(self.done) > KILLS_KEPT:
            del self.done[next(iter(self.done))]

    async def kill(self, sid: str, state: TradingState) -> KillReport:
        started = time.perf_counter()
        bars = self.bars
        async with bars.trading:  # no batch of this engine between the withdrawal and the report
            result = self.engine.kill(sid, state)
            errors: list[str] = []
            still_open: list[str] = []
            if bars.adapter is not None:
                result, still_open, errors = await self._at_venue(sid, result)
            await bars.publish(BatchResult(result.ts_event, {sid: result}, []))
            canceled = [e.order_id for e in result.decisions if isinstance(e, OrderCanceled)]
            flatten = [e.order_id for e in result.decisions if isinstance(e, OrderAccepted)]
            report = KillReport(
                strategy=sid, kill_id=state.kill_id, venue=self.broker, canceled=canceled, still_open=still_open,
                flatten_orders=flatten, errors=errors, confirmed=not still_open and not errors,
                elapsed_ms=(time.perf_counter() - started) * 1e3, ts_event=result.ts_event)
            await bars.publisher.send(subjects.kill_reports(sid), encode(report),
                                      {"Nats-Msg-Id": f"{sid}:{state.kill_id}:kill"})
            await bars.publisher.confirm(PUBLISH_TIMEOUT_S)
        self.reports = [*self.reports[-9:], report]
        log.warning("kill switch done", extra={"strategy": sid, "kill_id": state.kill_id,
                                               "canceled": len(canceled), "still_open": still_open,
                                               "flatten_orders": len(flatten), "errors": errors,
                                               "confirmed": report.confirmed, "elapsed_ms": report.elapsed_ms})
        return report

    async def _at_venue(self, sid: str, result: StrategyResult) -> tuple[StrategyResult, list[str], list[str]]:
        """Cancel at the venue, send the closing orders, and list what the venue still holds open."""
        adapter = self.bars.adapter
        assert adapter is not None
        errors: list[str] = []
        closing = [broker_order(sid, e) for e in result.decisions if isinstance(e, OrderAccepted)]
        flatten_ids = {o.order_id for o in closing}
        listed = await self._listed(sid, errors)
        # Withdrawn here, or held at the venue under the strategy's order ids: the venue must end them all.
        targets = {o.order_id: o for o in [*(listed or []), *self.engine.open_orders(sid)]}
        targets |= {e.order_id: broker_order(sid, e) for e in result.decisions if isinstance(e, OrderCanceled)}
        orders = [targets[order_id] for order_id in sorted(targets.keys() - flatten_ids)]
        answers = await self._cancel_all(orders, errors)
        if closing:
            try:
                acks = await submit_all(adapter, closing)
            except (BrokerRejected, BrokerUnavailable) as error:
                errors.append(f"closing orders not sent: {error}")
                acks = [OrderAck(order_id=o.order_id, status="rejected", reason=str(error)) for o in closing]
            errors += [f"closing order {a.order_id} {a.status}: {a.reason}" for a in acks if a.status == "rejected"]
            result = self.engine.settle(sid, result, acks)
        # Fills that crossed the cancels are booked (reconciliation), then the venue is asked what is open.
        self.engine.reconcile(sid, [a for a in answers if a is not None], result.ts_event)
        after = await self._listed(sid, errors)
        if after is not None:
            still_open = sorted({o.order_id for o in after} - flatten_ids)
        else:  # a venue that cannot list its orders: each cancel's own answer says whether it ended
            still_open = sorted(a.order_id for a in answers if a is not None and a.status not in ENDED)
            still_open += sorted(o.order_id for o, a in zip(orders, answers, strict=True) if a is None)
        return result, still_open, errors

    async def _listed(self, sid: str, errors: list[str]) -> list[BrokerOrder] | None:
        """The venue's open orders of this strategy, or None when it cannot list them (or did not answer)."""
        try:
            return await self.bars.venue_open_orders(sid)
        except (BrokerRejected, BrokerUnavailable) as error:
            errors.append(f"open orders not listed: {error}")
            return None

    async def _cancel_all(self, orders: list[BrokerOrder], errors: list[str]) -> list[OrderAck | None]:
        """Cancel every order at the venue: at once where the adapter can (`cancel_many`), else one by one,
        concurrently. None for an order whose cancel got no answer (said in `errors`)."""
        adapter = self.bars.adapter
        assert adapter is not None
        many: Callable[[list[BrokerOrder]], Awaitable[list[OrderAck]]] | None = getattr(adapter, "cancel_many",
                                                                                          None)
        if many is not None and orders:
            try:
                return list(await many(orders))
            except (BrokerRejected, BrokerUnavailable) as error:
                errors.append(f"cancels not answered: {error}")
                return [None] * len(orders)

        async def one(order: BrokerOrder) -> OrderAck | None:
            try:
                return await adapter.cancel(order)
            except (BrokerRejected, BrokerUnavailable) as error:
                errors.append(f"cancel {order.order_id}: {error}")
                return None

        return list(await asyncio.gather(*(one(order) for order in orders)))

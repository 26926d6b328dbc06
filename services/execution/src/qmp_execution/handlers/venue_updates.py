"""What a venue pushes between batches (Alpaca's trade-updates stream), booked as it comes.

Each update is an order's answer as the venue has it then (everything filled so far); it is booked the one
way every answer is (`ExecutionEngine.reconcile`: only what is not booked yet, once), under the lock the
batches take, and the fills go out with the next batch. An update about an order no strategy here holds is
ignored: reconciliation deals with what the books do not know. The stream is a shortcut, not a source of
truth: what it misses (a disconnect) is booked by the status questions asked before every batch.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from qmp_execution.engine.broker import OrderAck
from qmp_execution.handlers.bars import BarHandler

log = logging.getLogger(__name__)


class VenueUpdates:
    """Follows the adapter's stream of answers, where it has one (`trade_updates`)."""

    def __init__(self, bars: BarHandler) -> None:
        self.bars = bars
        self.answers = 0  # updates about orders held here
        self.fills = 0  # fills they booked
        self._task: asyncio.Task[None] | None = None

    def start(self) -> bool:
        follow: Callable[[Callable[[OrderAck], Awaitable[None]]], Awaitable[None]] | None = getattr(
            self.bars.adapter, "trade_updates", None)
        if follow is None:
            return False
        self._task = asyncio.create_task(self._follow(follow), name="execution-venue-updates")
        return True

    async def _follow(self, follow: Any) -> None:
        try:
            await follow(self.on_answer)
        except asyncio.CancelledError:
            raise
        except Exception:  # batches still reconcile by asking: the stream only books sooner
            log.exception("the venue's update stream ended; fills are booked by reconciliation alone")

    async def on_answer(self, answer: OrderAck) -> None:
        engine = self.bars.engine
        async with self.bars.trading:
            for sid in engine.strategies():
                if any(order.order_id == answer.order_id for order in engine.open_orders(sid)):
                    booked = engine.reconcile(sid, [answer], self.bars.clock.now_ns())
                    self.answers += 1
                    self.fills += len(booked)
                    self.bars.reconciled_fills += len(booked)
                    if booked:
                        log.info("fills from the venue's stream", extra={
                            "strategy": sid, "order_id": answer.order_id, "status": answer.status,
                            "fills": len(booked)})
                    return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

"""The interface of an external broker (submit, cancel, positions, account).

Execution talks to an external broker only through `BrokerAdapter`: `rest.RestBrokerAdapter` speaks to a
REST broker, `alpaca.AlpacaAdapter` to Alpaca, `exchange.ExchangeAdapter` to a crypto exchange through ccxt.
The paper broker (`engine.paper.PaperBroker`) is pure and fills against bars inside the engine; it answers in
the same vocabulary (`engine.broker`: orders, answers, fills, the account), and every answer, paper or
external, is booked by one rule (`StrategyHost`).
"""

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from qmp_core import metrics
from qmp_execution.engine.broker import Account, BrokerOrder, OrderAck

# The calls to a venue's API that are timed (`qmp_venue_request_seconds`), by the adapter method that makes them.
TIMED_CALLS = frozenset({"submit", "submit_many", "cancel", "cancel_many", "positions", "account", "status",
                         "open_orders"})


@runtime_checkable
class BrokerAdapter(Protocol):
    """What execution needs from a broker. An order is named by what was sent (`BrokerOrder`): some venues
    need its symbol to find it. Optional: `status(order)` (reconciliation), `open_orders(strategy)` and
    `cancel_many(orders)` (the kill switch), `submit_many(orders)` (concurrency)."""

    name: str

    async def submit(self, order: BrokerOrder) -> OrderAck: ...

    async def cancel(self, order: BrokerOrder) -> OrderAck: ...

    async def positions(self) -> dict[str, float]: ...

    async def account(self) -> Account: ...


async def submit_all(adapter: BrokerAdapter, orders: Sequence[BrokerOrder]) -> list[OrderAck]:
    """Submit orders one after the other (adapters with concurrency override this through `submit_many`)."""
    many = getattr(adapter, "submit_many", None)
    if callable(many):
        return list(await many(orders))
    return [await adapter.submit(order) for order in orders]


class TimedAdapter:
    """An adapter whose calls to the venue are timed, by endpoint (the adapter's method) and outcome.

    Everything else (its name, its optional methods, the stream of updates) is the adapter's own, so code that
    asks `getattr(adapter, "status", None)` sees exactly what the wrapped adapter has.
    """

    def __init__(self, adapter: BrokerAdapter) -> None:
        self.wrapped = adapter
        self.name = adapter.name

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self.wrapped, attribute)
        if attribute not in TIMED_CALLS or not callable(value):
            return value
        return self._timed(attribute, value)

    def _timed(self, endpoint: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started, outcome = time.perf_counter(), "error"
            try:
                result = await call(*args, **kwargs)
                outcome = "ok"
                return result
            finally:
                metrics.VENUE_REQUEST.labels(self.name, endpoint, outcome).observe(time.perf_counter() - started)

        return timed

"""The interface of an external broker (submit, cancel, positions, account).

Execution talks to an external broker only through `BrokerAdapter`: `rest.RestBrokerAdapter` speaks to a
REST broker, `alpaca.AlpacaAdapter` to Alpaca, `exchange.ExchangeAdapter` to a crypto exchange through ccxt.
The paper broker (`engine.paper.PaperBroker`) is pure and fills against bars inside the engine; it answers in
the same vocabulary (`engine.broker`: orders, answers, fills, the account), and every answer, paper or
external, is booked by one rule (`StrategyHost`).
"""

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from qmp_execution.engine.broker import Account, BrokerOrder, OrderAck


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

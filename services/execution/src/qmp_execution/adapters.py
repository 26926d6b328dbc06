"""The broker adapter interface (submit, cancel, positions, account) and the paper implementation.

Execution talks to a broker only through `BrokerAdapter`. The paper broker is the first implementation
(`PaperAdapter`, fills simulated against bars by `paper.PaperBroker`); `rest.RestBrokerAdapter` speaks
to a REST broker, `alpaca.AlpacaAdapter` to Alpaca. What an adapter and the engine say to each other
(orders, answers, fills, the account) is in `engine.broker`: the adapters' vocabulary, not bus messages.
"""

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from qmp_execution.engine.book import Portfolio, Working
from qmp_execution.engine.broker import Account, BrokerFill, BrokerOrder, OrderAck
from qmp_execution.engine.paper import Market, PaperBroker


@runtime_checkable
class BrokerAdapter(Protocol):
    """What execution needs from a broker."""

    name: str

    async def submit(self, order: BrokerOrder) -> OrderAck: ...

    async def cancel(self, order_id: str) -> OrderAck: ...

    async def positions(self) -> dict[str, float]: ...

    async def account(self) -> Account: ...


async def submit_all(adapter: BrokerAdapter, orders: Sequence[BrokerOrder]) -> list[OrderAck]:
    """Submit orders one after the other (adapters with concurrency override this through `submit_many`)."""
    many = getattr(adapter, "submit_many", None)
    if callable(many):
        return list(await many(orders))
    return [await adapter.submit(order) for order in orders]


class PaperAdapter:
    """The paper broker behind the adapter interface: orders work in a book and fill on `on_bar`."""

    name = "paper"

    def __init__(self, book: Portfolio, broker: PaperBroker) -> None:
        self.book = book
        self.broker = broker

    async def submit(self, order: BrokerOrder) -> OrderAck:
        existing = self.book.working.get(order.symbol)
        if existing is not None and existing.order_id == order.order_id:
            return OrderAck(order_id=order.order_id, status="accepted", endpoint=self.name)  # idempotent
        if existing is not None:
            return OrderAck(order_id=order.order_id, status="rejected", endpoint=self.name,
                            reason=f"order {existing.order_id} is still working on {order.symbol}")
        self.book.working[order.symbol] = Working(order_id=order.order_id, symbol=order.symbol, side=order.side,
                                                  quantity=order.quantity, price=order.price,
                                                  ts_event=order.ts_event)
        return OrderAck(order_id=order.order_id, status="accepted", endpoint=self.name)

    async def cancel(self, order_id: str) -> OrderAck:
        for symbol, working in list(self.book.working.items()):
            if working.order_id == order_id:
                del self.book.working[symbol]
                return OrderAck(order_id=order_id, status="canceled", endpoint=self.name)
        return OrderAck(order_id=order_id, status="unknown", reason="no such working order", endpoint=self.name)

    async def positions(self) -> dict[str, float]:
        return dict(self.book.positions)

    async def account(self) -> Account:
        return Account(cash=self.book.cash, equity=self.book.equity())

    def on_bar(self, market: Market) -> list[BrokerFill]:
        """Fill working orders against a bar (synchronous: the paper broker is pure)."""
        return [BrokerFill(fill_id=f.fill_id, quantity=f.quantity, price=f.price, fee=f.fee)
                for f in self.broker.execute(self.book, market)]

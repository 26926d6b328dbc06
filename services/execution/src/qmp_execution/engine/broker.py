"""What the engine and a broker say to each other: an order as sent, the broker's answer, its fills, the
account. The vocabulary of the paper broker and of every `BrokerAdapter` (REST, Alpaca); not bus messages."""

from typing import Literal, Protocol

from msgspec import Struct

from qmp_core.messages import Side

AckStatus = Literal["accepted", "partially_filled", "filled", "canceled", "rejected", "unknown"]


class BrokerOrder(Struct, frozen=True, kw_only=True):
    """An order as sent to a broker; `order_id` doubles as the idempotency key."""

    order_id: str
    strategy: str
    symbol: str
    side: Side
    quantity: float
    price: float  # arrival price: a marketable limit for brokers that need one
    ts_event: int
    # The rollout it belongs to. Not part of a venue's client order id: an order sent under one rollout
    # must still be found under the same id after a redeploy.
    deployment_id: str = ""


class OrderLike(Protocol):
    """What an accepted order, a withdrawn one and a working one all say of the order."""

    order_id: str
    symbol: str
    side: Side
    quantity: float
    price: float
    ts_event: int
    deployment_id: str


def broker_order(strategy: str, order: OrderLike) -> BrokerOrder:
    """The order as sent (or to be asked about) at the broker."""
    return BrokerOrder(order_id=order.order_id, strategy=strategy, symbol=order.symbol, side=order.side,
                       quantity=order.quantity, price=order.price, ts_event=order.ts_event,
                       deployment_id=order.deployment_id)


class BrokerFill(Struct, frozen=True, kw_only=True):
    fill_id: str
    quantity: float
    price: float
    fee: float = 0.0
    participation: float = 0.0  # the share of the bar's volume it took, where the broker knows (paper)
    model_bps: float | None = None  # the slippage model's cost of it, where the broker priced it with the model


class OrderAck(Struct, frozen=True, kw_only=True):
    """A broker's answer about one order: its status, and everything filled on it so far (`fills`, which
    the engine books only in the part it has not booked yet)."""

    order_id: str
    status: AckStatus
    fills: list[BrokerFill] = []
    reason: str = ""
    endpoint: str = ""


class Account(Struct, frozen=True, kw_only=True):
    cash: float
    equity: float
    currency: str = "USD"
    buying_power: float = 0.0  # what the venue would let the account buy now (0: not reported)

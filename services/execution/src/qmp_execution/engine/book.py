"""A strategy's book: cash, positions with average entry prices, realized and unrealized PnL, fees,
working orders. Pure state; changed only by fills (cash moves only by fills) and by marks.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qmp_core.messages import Fill, PortfolioSnapshot, Side, WorkingOrder

QTY_EPSILON = 1e-9


@dataclass
class Working:
    """An accepted order with quantity still to fill (mutable twin of the WorkingOrder message)."""

    order_id: str
    symbol: str
    side: Side
    quantity: float
    price: float
    ts_event: int
    filled: float = 0.0
    fills: int = 0
    bars_waited: int = 0
    filled_value: float = 0.0  # Σ quantity × price of the fills booked
    deployment_id: str = ""  # the rollout it was sent under

    @property
    def remaining(self) -> float:
        return max(self.quantity - self.filled, 0.0)

    @property
    def signed_remaining(self) -> float:
        return self.remaining if self.side == "BUY" else -self.remaining

    def to_message(self) -> WorkingOrder:
        return WorkingOrder(order_id=self.order_id, symbol=self.symbol, side=self.side, quantity=self.quantity,
                            price=self.price, ts_event=self.ts_event, filled=self.filled, fills=self.fills,
                            bars_waited=self.bars_waited, filled_value=self.filled_value,
                            deployment_id=self.deployment_id)

    @classmethod
    def from_message(cls, order: WorkingOrder) -> "Working":
        return cls(order_id=order.order_id, symbol=order.symbol, side=order.side, quantity=order.quantity,
                   price=order.price, ts_event=order.ts_event, filled=order.filled, fills=order.fills,
                   bars_waited=order.bars_waited, filled_value=order.filled_value,
                   deployment_id=order.deployment_id)


@dataclass
class Portfolio:
    """A strategy's book (`orders_total` counts accepted + denied decisions)."""

    strategy: str
    cash: float
    positions: dict[str, float] = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=dict)
    avg_prices: dict[str, float] = field(default_factory=dict)
    working: dict[str, Working] = field(default_factory=dict)  # symbol -> its one working order
    realized_pnl: float = 0.0
    fees: float = 0.0
    last_ts: int = 0
    last_seq: int = 0
    orders_total: int = 0
    denied_total: int = 0
    fills_total: int = 0
    venue: str = ""  # the one venue whose prices mark this book: a symbol's price elsewhere is not its price

    def equity(self) -> float:
        """Return cash plus positions marked at the latest closes."""
        return self.cash + math.fsum(q * self.prices.get(s, 0.0) for s, q in self.positions.items())

    def unrealized_pnl(self) -> float:
        return math.fsum(q * (self.prices.get(s, 0.0) - self.avg_prices.get(s, 0.0))
                         for s, q in self.positions.items())

    def gross_exposure(self) -> float:
        return math.fsum(abs(q) * self.prices.get(s, 0.0) for s, q in self.positions.items())

    def mark(self, symbols: Sequence[str], closes: np.ndarray) -> None:
        self.prices.update(zip(symbols, closes.tolist(), strict=True))

    def apply(self, fill: Fill) -> None:
        """Book a fill: cash pays notional and fee; realized PnL on the part that closes a position."""
        signed = fill.quantity if fill.side == "BUY" else -fill.quantity
        self.cash -= signed * fill.price + fill.fee
        self.fees += fill.fee
        position = self.positions.get(fill.symbol, 0.0)
        average = self.avg_prices.get(fill.symbol, fill.price)
        quantity = position + signed
        if position == 0.0 or (position > 0.0) == (signed > 0.0):
            average = (position * average + signed * fill.price) / quantity
        else:
            closed = min(abs(signed), abs(position))
            self.realized_pnl += closed * (fill.price - average) * (1.0 if position > 0.0 else -1.0)
            if abs(signed) > abs(position):  # flipped: the new position was opened at this fill's price
                average = fill.price
        if abs(quantity) <= QTY_EPSILON:
            self.positions.pop(fill.symbol, None)
            self.avg_prices.pop(fill.symbol, None)
        else:
            self.positions[fill.symbol] = quantity
            self.avg_prices[fill.symbol] = average
        self.fills_total += 1

    def to_snapshot(self) -> PortfolioSnapshot:
        symbols = sorted(self.positions)
        return PortfolioSnapshot(
            strategy=self.strategy, ts_event=self.last_ts, cash=self.cash, equity=self.equity(),
            symbols=symbols, quantities=[self.positions[s] for s in symbols],
            prices=[self.prices.get(s, 0.0) for s in symbols], last_seq=self.last_seq,
            orders_total=self.orders_total, denied_total=self.denied_total, fills_total=self.fills_total,
            realized_pnl=self.realized_pnl, unrealized_pnl=self.unrealized_pnl(), fees=self.fees,
            avg_prices=[self.avg_prices.get(s, 0.0) for s in symbols], venue=self.venue,
            working=[self.working[s].to_message() for s in sorted(self.working)],
        )

    @classmethod
    def from_snapshot(cls, snapshot: PortfolioSnapshot) -> "Portfolio":
        lengths = {len(snapshot.symbols), len(snapshot.quantities), len(snapshot.prices)}
        if len(lengths) != 1 or (snapshot.avg_prices and len(snapshot.avg_prices) != len(snapshot.symbols)):
            raise ValueError(f"snapshot of {snapshot.strategy} has columns of lengths {sorted(lengths)} "
                             f"and {len(snapshot.avg_prices)} average prices")
        # Snapshots written before average prices existed: take the mark as the entry price.
        averages = snapshot.avg_prices or snapshot.prices
        held = [i for i, q in enumerate(snapshot.quantities) if q != 0.0]
        return cls(
            strategy=snapshot.strategy, cash=snapshot.cash,
            positions={snapshot.symbols[i]: snapshot.quantities[i] for i in held},
            prices=dict(zip(snapshot.symbols, snapshot.prices, strict=True)),
            avg_prices={snapshot.symbols[i]: averages[i] for i in held},
            working={w.symbol: Working.from_message(w) for w in snapshot.working},
            realized_pnl=snapshot.realized_pnl, fees=snapshot.fees,
            last_ts=snapshot.ts_event, last_seq=snapshot.last_seq, orders_total=snapshot.orders_total,
            denied_total=snapshot.denied_total, fills_total=snapshot.fills_total, venue=snapshot.venue,
        )

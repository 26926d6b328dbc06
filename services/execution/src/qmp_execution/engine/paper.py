"""The paper broker: working orders filled against bars with volume limits, latency, slippage and fees.

Per bar, each working order whose latency has elapsed (`latency_bars` bars after its decision; 0 fills
on the decision bar) and whose symbol is priced in the bar fills at most `max_bar_participation` of the
bar's volume (all of it when the bar has no volume), at the close moved against it by the slippage
model; the rest keeps working on the next bars. The broker answers with `OrderAck`s, as a venue does,
and the host books them by the one rule every broker's answers go through (`StrategyHost`). Fill ids are
`<order_id>-f<n>`, n counting that order's fills from 1, so a recomputed bar gives the same ids.
`slippage_bps` is measured against the arrival price (the close when the order was decided): over
several bars it includes the price drift.
"""

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from msgspec import Meta, Struct

from qmp_execution.engine.book import QTY_EPSILON, Working
from qmp_execution.engine.broker import BrokerFill, OrderAck
from qmp_execution.engine.slippage import BPS, SlippageConfig, SlippageModel


class PaperConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    fee_bps: Annotated[float, Meta(ge=0.0)] = 0.5
    # Volume limit: the largest fraction of a bar's volume one order may take in that bar (0: no limit).
    max_bar_participation: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.1
    latency_bars: Annotated[int, Meta(ge=0)] = 0
    lot_size: Annotated[float, Meta(ge=0.0)] = 0.0
    slippage: SlippageConfig = SlippageConfig()


@dataclass(frozen=True)
class Market:
    """One bar as the broker sees it: per priced symbol its close, volume, daily sigma and ADV (shares)."""

    ts_event: int
    symbols: Sequence[str]
    close: np.ndarray
    volume: np.ndarray
    sigma: np.ndarray
    adv: np.ndarray
    exec_days: float  # the bar's length in days: the execution time of a fill within it
    index: dict[str, int]


class PaperBroker:
    """Fills working orders against bars and answers as a venue does (`OrderAck`s, booked by the host like
    any broker's); deterministic for the same bars and orders."""

    def __init__(self, strategy_id: str, config: PaperConfig | None = None) -> None:
        self.strategy_id = strategy_id
        self.config = config or PaperConfig()
        self.model = SlippageModel(self.config.slippage)

    def execute(self, working: Mapping[str, Working], market: Market) -> list[OrderAck]:
        """Fill what the bar allows of every eligible working order; answer for each order that filled.

        The orders are left as they are (the host books the answers); only their latency count moves.
        """
        c = self.config
        eligible = [w for s, w in sorted(working.items()) if w.bars_waited >= c.latency_bars and s in market.index]
        acks: list[OrderAck] = []
        if eligible:
            rows = np.fromiter((market.index[w.symbol] for w in eligible), dtype=np.int64, count=len(eligible))
            remaining = np.fromiter((w.remaining for w in eligible), dtype=np.float64, count=len(eligible))
            volume = market.volume[rows]
            quantity = remaining.copy()
            if c.max_bar_participation > 0.0:
                limited = np.isfinite(volume) & (volume > 0.0)
                quantity[limited] = np.minimum(remaining[limited], c.max_bar_participation * volume[limited])
            if c.lot_size > 0.0:
                quantity = np.floor(quantity / c.lot_size + 1e-9) * c.lot_size
            key = zlib.crc32(f"{self.strategy_id}:{market.ts_event}".encode())
            inputs = (quantity, market.sigma[rows], market.adv[rows], np.full(len(eligible), market.exec_days))
            cost, rate = self.model.costs(*inputs, noise_key=key)
            # The model's own prediction: the cost itself unless noise was drawn around it.
            predicted = self.model.costs(*inputs, noise=False)[0] if self.model.config.noise_scale > 0.0 else cost
            fee_rate = c.fee_bps * BPS
            for order, qty, frac, model, part, close in zip(
                    eligible, quantity.tolist(), cost.tolist(), predicted.tolist(), rate.tolist(),
                    market.close[rows].tolist(), strict=True):
                if qty > QTY_EPSILON:
                    price = close * (1.0 + (1.0 if order.side == "BUY" else -1.0) * frac)
                    acks.append(_answer(order, BrokerFill(fill_id=f"{order.order_id}-f{order.fills + 1}",
                                                          quantity=qty, price=price, fee=qty * price * fee_rate,
                                                          participation=part, model_bps=model / BPS)))
        for order in working.values():
            order.bars_waited += 1
        return acks


def _answer(order: Working, fill: BrokerFill) -> OrderAck:
    """The paper broker's answer after a fill: everything filled so far, as a venue reports it (the fills
    booked before, summed at their average price, then this one)."""
    fills = [fill]
    if order.filled > 0.0:
        average = order.filled_value / order.filled if order.filled_value > 0.0 else order.price
        fills.insert(0, BrokerFill(fill_id=f"{order.order_id}-f1-f{order.fills}", quantity=order.filled,
                                   price=average))
    done = order.filled + fill.quantity >= order.quantity - QTY_EPSILON * max(1.0, order.quantity)
    return OrderAck(order_id=order.order_id, status="filled" if done else "partially_filled", fills=fills,
                    endpoint="paper")

"""The paper broker: working orders filled against bars with volume limits, latency, slippage and fees.

Per bar, each working order whose latency has elapsed (`latency_bars` bars after its decision; 0 fills
on the decision bar) and whose symbol is priced in the bar fills at most `max_bar_participation` of the
bar's volume (all of it when the bar has no volume), at the close moved against it by the slippage
model; the rest keeps working on the next bars. Fill ids are `<order_id>-f<n>`, n counting that order's
fills from 1, so a recomputed bar gives the same ids. `slippage_bps` is measured against the arrival
price (the close when the order was decided): over several bars it includes the price drift.
"""

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from msgspec import Meta, Struct

from qmp_core.messages import Fill
from qmp_execution.engine.book import QTY_EPSILON, Portfolio, Working
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
    """Fills a book's working orders against bars; deterministic for the same bars and orders."""

    def __init__(self, strategy_id: str, config: PaperConfig | None = None) -> None:
        self.strategy_id = strategy_id
        self.config = config or PaperConfig()
        self.model = SlippageModel(self.config.slippage)

    def execute(self, book: Portfolio, market: Market) -> list[Fill]:
        """Fill what the bar allows of every eligible working order; book the fills; return them."""
        c = self.config
        eligible = [w for s, w in sorted(book.working.items())
                    if w.bars_waited >= c.latency_bars and s in market.index]
        fills: list[Fill] = []
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
            cost, rate = self.model.costs(quantity, market.sigma[rows], market.adv[rows],
                                          np.full(len(eligible), market.exec_days), noise_key=key)
            fills = self._fill(book, eligible, rows, quantity, cost, rate, market)
        for order in book.working.values():
            order.bars_waited += 1
        return fills

    def _fill(self, book: Portfolio, orders: list[Working], rows: np.ndarray, quantity: np.ndarray,
              cost: np.ndarray, rate: np.ndarray, market: Market) -> list[Fill]:
        fee_rate = self.config.fee_bps * BPS
        closes = market.close[rows].tolist()
        sigmas = market.sigma[rows].tolist()
        advs = market.adv[rows].tolist()
        fills: list[Fill] = []
        for order, qty, frac, part, close, sigma, adv in zip(orders, quantity.tolist(), cost.tolist(),
                                                              rate.tolist(), closes, sigmas, advs, strict=True):
            if qty <= QTY_EPSILON:
                continue
            direction = 1.0 if order.side == "BUY" else -1.0
            price = close * (1.0 + direction * frac)
            order.filled += qty
            order.fills += 1
            left = order.remaining
            if left <= QTY_EPSILON * max(1.0, order.quantity):
                left = 0.0
                del book.working[order.symbol]
            fill = Fill(
                strategy=self.strategy_id, order_id=order.order_id, fill_id=f"{order.order_id}-f{order.fills}",
                symbol=order.symbol, side=order.side, quantity=qty, price=price, arrival_price=order.price,
                slippage_bps=direction * (price - order.price) / order.price / BPS, fee=qty * price * fee_rate,
                ts_event=market.ts_event, participation=part, daily_vol=sigma if np.isfinite(sigma) else 0.0,
                adv=adv if np.isfinite(adv) else 0.0, remaining=left,
            )
            book.apply(fill)
            fills.append(fill)
        return fills

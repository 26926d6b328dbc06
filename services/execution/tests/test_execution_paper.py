"""The paper broker (engine/paper.py): fills against bars with volume limits, latency and slippage,
answered as a venue answers and booked by the host's one rule."""

import math

import numpy as np
import pytest
from execution_testkit import (
    CAPITAL,
    NO_COST,
    SID,
    FixedWeights,
    bar,
    config,
    engine_with,
    events_of,
)

from qmp_core.messages import (
    Fill,
    OrderAccepted,
    OrderEvent,
    PortfolioSnapshot,
    codec,
    encode,
)
from qmp_execution.engine.book import Portfolio, Working
from qmp_execution.engine.broker import BrokerFill
from qmp_execution.engine.paper import Market, PaperBroker, PaperConfig
from qmp_execution.engine.slippage import SlippageConfig

ADV = 1_000_000.0
SIGMA = 0.02


def test_process_when_bar_volume_limited_then_partial_fills_over_bars_with_sequential_ids() -> None:
    strategy = FixedWeights({"AAA": 0.005})  # 5,000 notional: 100 shares at 50
    engine = engine_with({SID: strategy}, config(min_order_notional=100.0,
                                                 paper={"max_bar_participation": 0.1, "slippage": NO_COST}))
    engine.process(bar(0, {"AAA": 50.0}, volume=400.0))

    days = [engine.process(bar(d, {"AAA": 50.0}, volume=400.0)).results[SID] for d in (1, 2, 3, 4)]

    order_id = events_of(days[0], OrderAccepted)[0].order_id
    fills = [f for day in days for f in day.fills]
    assert [f.fill_id for f in fills] == [f"{order_id}-f1", f"{order_id}-f2", f"{order_id}-f3"]
    assert [f.quantity for f in fills] == pytest.approx([40.0, 40.0, 20.0])
    assert [f.remaining for f in fills] == pytest.approx([60.0, 20.0, 0.0])
    assert [len(day.snapshot.working) for day in days] == [1, 1, 0, 0]
    assert days[0].snapshot.working[0].filled == pytest.approx(40.0)
    assert all(not events_of(day, OrderAccepted) for day in days[1:])  # no new order while one works
    assert days[-1].snapshot.cash == pytest.approx(CAPITAL - 100 * 50.0 * (1 + 0.5e-4), rel=1e-12)


def test_process_when_latency_one_bar_then_filled_at_next_close_with_drift_in_slippage() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})}, config(paper={"latency_bars": 1, "slippage": NO_COST}))
    engine.process(bar(0, {"AAA": 50.0}))

    decided = engine.process(bar(1, {"AAA": 50.0})).results[SID]
    filled = engine.process(bar(2, {"AAA": 49.0})).results[SID]  # the target still wants at least as much

    assert events_of(decided, OrderAccepted) and decided.fills == []
    assert events_of(filled, OrderAccepted) == []
    fill = filled.fills[0]
    assert fill.price == 49.0 and fill.arrival_price == 50.0
    assert fill.slippage_bps == pytest.approx((49.0 / 50.0 - 1.0) * 1e4)
    assert fill.model_slippage_bps == 0.0  # the model costs nothing here: the whole slippage is the drift
    assert fill.ts_event == filled.ts_event


def test_restore_when_orders_working_then_partial_fills_continue_with_same_ids() -> None:
    def run(cut: int | None) -> list[str]:
        cfg = config(min_order_notional=100.0, paper={"max_bar_participation": 0.1})
        engine = engine_with({SID: FixedWeights({"AAA": 0.005})}, cfg)
        ids: list[str] = []
        for day in range(6):
            batch = bar(day, {"AAA": 50.0 + day}, volume=400.0)
            result = engine.process(batch).results[SID]
            ids += [f.fill_id for f in result.fills]
            if day == cut:
                snapshot = codec(PortfolioSnapshot).decode(encode(result.snapshot))
                engine = engine_with({SID: FixedWeights({"AAA": 0.005})}, cfg)
                engine.restore(snapshot)
                engine.warm([bar(d, {"AAA": 50.0 + d}, volume=400.0) for d in range(day + 1)])
        return ids

    straight = run(None)

    assert len(straight) >= 3 and len({i.rsplit("-", 1)[0] for i in straight}) < len(straight)  # partial fills
    assert run(2) == straight


def test_paper_fills_when_booked_then_through_the_brokers_answers_as_any_venue() -> None:
    # The paper broker answers with everything filled so far; the host books only the new part, once.
    cfg = config(min_order_notional=100.0, paper={"max_bar_participation": 0.1})
    engine = engine_with({SID: FixedWeights({"AAA": 0.005})}, cfg)
    fills = []
    for day in range(5):
        fills += engine.process(bar(day, {"AAA": 50.0}, volume=400.0)).results[SID].fills
    host = engine.hosts[SID]
    order_id = fills[0].order_id

    # 0.5% of 1,000,000 at 50 is 100 shares: 10% of each bar's 400, then the rest.
    assert [(f.fill_id, f.quantity, f.remaining) for f in fills] == [
        (f"{order_id}-f1", 40.0, 60.0), (f"{order_id}-f2", 40.0, 20.0), (f"{order_id}-f3", 20.0, 0.0)]
    assert host.portfolio.positions["AAA"] == pytest.approx(100.0) and host.portfolio.working == {}


def test_process_when_buy_and_sell_then_buy_pays_more_and_sell_receives_less() -> None:
    strategy = FixedWeights({"AAA": 0.5})
    sqrt_law = {"model": "sqrt", "half_spread_bps": 2.0, "sqrt_y": 0.5}
    engine = engine_with({SID: strategy}, config(paper={"fee_bps": 1.0, "slippage": sqrt_law}))
    closes = [50.0, 51.0, 49.5, 50.5]
    for day, close in enumerate(closes[:-1]):
        engine.process(bar(day, {"AAA": close}, volume=20_000.0))
    buy_fill = engine.hosts[SID]._last.fills[0]  # type: ignore[union-attr]
    strategy.weights = {"AAA": 0.0}

    sold = engine.process(bar(3, {"AAA": closes[3]}, volume=20_000.0)).results[SID]
    sell_decision, sell_fill = sold.decisions[0], sold.fills[0]

    assert buy_fill.side == "BUY" and sell_fill.side == "SELL"
    assert buy_fill.price > buy_fill.arrival_price
    assert sell_fill.price < sell_fill.arrival_price
    assert buy_fill.slippage_bps > 0 and sell_fill.slippage_bps > 0
    sigma = float(np.std(np.diff(np.log(closes)), ddof=1))
    cost = 2.0e-4 + 0.5 * sigma * math.sqrt(sell_decision.quantity / 20_000.0)
    assert sell_fill.price == pytest.approx(closes[3] * (1 - cost), rel=1e-12)
    assert sell_fill.slippage_bps == pytest.approx(cost * 1e4, rel=1e-9)
    assert sell_fill.model_slippage_bps == pytest.approx(cost * 1e4, rel=1e-9)  # filled at arrival: no drift
    assert sell_fill.fee == pytest.approx(sell_fill.quantity * sell_fill.price * 1e-4, rel=1e-12)
    assert codec(Fill).decode(encode(sell_fill)) == sell_fill
    assert codec(OrderEvent).decode(encode(sell_decision)) == sell_decision


def test_fill_when_buy_and_sell_of_same_size_then_costs_symmetric() -> None:
    broker = PaperBroker("s", PaperConfig(max_bar_participation=0.0))
    market = Market(ts_event=1, symbols=["A", "B"], close=np.array([100.0, 100.0]), volume=np.array([1e6, 1e6]),
                    sigma=np.array([SIGMA, SIGMA]), adv=np.array([ADV, ADV]), exec_days=1.0, index={"A": 0, "B": 1})
    book = Portfolio(strategy="s", cash=1e9, positions={"B": 50_000.0}, avg_prices={"B": 100.0})
    book.working = {s: Working(order_id=f"o{s}", symbol=s, side=side, quantity=50_000.0, price=100.0, ts_event=1)
                    for s, side in (("A", "BUY"), ("B", "SELL"))}

    buy, sell = (ack.fills[-1] for ack in broker.execute(book.working, market))

    assert buy.price > 100.0 > sell.price
    assert buy.price - 100.0 == pytest.approx(100.0 - sell.price, rel=1e-12)


def test_fill_when_model_has_noise_then_model_slippage_is_the_noiseless_prediction() -> None:
    market = Market(ts_event=7, symbols=["A"], close=np.array([100.0]), volume=np.array([1e6]),
                    sigma=np.array([SIGMA]), adv=np.array([ADV]), exec_days=1.0, index={"A": 0})
    noisy = PaperBroker("s", PaperConfig(max_bar_participation=0.0, slippage=SlippageConfig(noise_scale=1.0, seed=3)))
    plain = PaperBroker("s", PaperConfig(max_bar_participation=0.0))

    def fill(broker: PaperBroker) -> BrokerFill:
        working = {"A": Working(order_id="oA", symbol="A", side="BUY", quantity=50_000.0, price=100.0, ts_event=7)}
        return broker.execute(working, market)[0].fills[-1]

    drawn, predicted = fill(noisy), fill(plain)
    assert drawn.price != predicted.price  # the noise moved the fill
    assert drawn.model_bps == pytest.approx(predicted.model_bps, rel=1e-12)
    assert predicted.model_bps == pytest.approx((predicted.price / 100.0 - 1.0) * 1e4, rel=1e-9)

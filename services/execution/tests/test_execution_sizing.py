"""Sizing by Expected Shortfall (engine/sizing.py): the exposure scaled to the strategy's ES budget."""

import pytest
from execution_testkit import (
    CAPITAL,
    NO_COST,
    PRICES,
    SID,
    FixedWeights,
    bar,
    config,
    engine_with,
    events_of,
    risk,
)

from qmp_core.messages import (
    OrderAccepted,
)


def test_process_when_es_above_budget_then_exposure_scaled_to_budget() -> None:
    strategy = FixedWeights({"AAA": 0.25, "BBB": 0.25})
    engine = engine_with({SID: strategy}, config(es_budget=0.05, paper={"slippage": NO_COST, "fee_bps": 0.0}))
    engine.process(bar(0, PRICES))
    engine.process(bar(1, PRICES))  # gross exposure 0.5
    # 4% ES at gross 0.5 is 8% per unit of gross; the historical key is ignored when a fat-tail key exists.
    engine.on_risk(risk(SID, {"historical_99": 0.01, "evt_99": 0.04}))
    strategy.weights = {"AAA": 0.5, "BBB": 0.5}  # gross 1.0: projected ES 8% > budget 5%

    result = engine.process(bar(2, PRICES)).results[SID]

    scale = 0.05 / 0.08
    assert result.es_scale == pytest.approx(scale)
    book = dict(zip(result.snapshot.symbols, result.snapshot.quantities, strict=True))
    for symbol, price in PRICES.items():
        assert book[symbol] * price == pytest.approx(0.5 * CAPITAL * scale, rel=1e-9)
    assert "evt_99" in events_of(result, OrderAccepted)[0].reason
    assert {order.es_key for order in events_of(result, OrderAccepted)} == {"evt_99"}


def test_process_when_es_within_budget_then_not_scaled() -> None:
    strategy = FixedWeights({"AAA": 0.25})
    engine = engine_with({SID: strategy}, config(es_budget=0.05))
    engine.process(bar(0, PRICES))
    engine.process(bar(1, PRICES))
    engine.on_risk(risk(SID, {"historical_99": 0.01}))

    result = engine.process(bar(2, PRICES)).results[SID]

    assert result.es_scale == 1.0
    assert [order.es_key for order in events_of(result, OrderAccepted)] == [""]

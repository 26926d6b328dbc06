"""The engine's settings under operators' pre-trade limits: a strategy's own over ALL's over the settings."""

import pytest
from execution_testkit import PRICES, SID, FixedWeights, bar, config, engine_with, events_of

from qmp_core.messages import OrderAccepted, OrderDenied, PreTradeLimits
from qmp_execution.app import ExecutionSettings, check_phase_env
from qmp_execution.engine import CODE_MAX_NOTIONAL, CODE_RESTRICTED, EngineConfig
from qmp_execution.engine.config import LIMIT_NAMES, limit_values, with_limits


def test_limit_names_when_listed_then_each_is_an_engine_setting_of_the_same_name() -> None:
    assert set(LIMIT_NAMES) <= set(EngineConfig.__struct_fields__)


def test_with_limits_when_levels_given_then_later_wins_and_what_a_level_leaves_out_keeps_the_one_below() -> None:
    base = config(max_order_notional=1e6, price_band=0.5, max_order_rate=100)
    every = PreTradeLimits(max_order_notional=5e5, restricted_symbols=["GME"], max_order_rate=10)
    own = PreTradeLimits(max_order_notional=2e5, max_gross_exposure=3e6)

    limited = with_limits(base, every, own)

    assert (limited.max_order_notional, limited.max_gross_exposure, limited.max_order_rate) == (2e5, 3e6, 10)
    assert limited.price_band == 0.5 and limited.restricted_symbols == frozenset({"GME"})
    assert with_limits(base, None, None) is base
    assert limit_values(limited)["restricted_symbols"] == ["GME"] and limit_values(limited)["price_band"] == 0.5


def test_set_limits_when_all_then_own_then_removed_then_orders_judged_by_each_in_turn() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.2, "BBB": 0.2}), "other": FixedWeights({"AAA": 0.2})},
                         config())
    engine.process(bar(0, PRICES))  # 0.2 of 1,000,000: orders of 200,000

    reached = engine.set_limits("ALL", PreTradeLimits(max_order_notional=150_000.0))
    engine.set_limits(SID, PreTradeLimits(max_order_notional=0.0, restricted_symbols=["BBB"]))  # 0: off for SID
    first = engine.process(bar(1, PRICES)).results
    engine.set_limits("ALL", None)
    engine.set_limits(SID, None)

    assert reached == ["alpha", "other"]
    assert [(d.symbol, d.reason_code) for d in events_of(first["other"], OrderDenied)] == [("AAA", CODE_MAX_NOTIONAL)]
    assert [e.symbol for e in events_of(first[SID], OrderAccepted)] == ["AAA"]
    assert [(d.symbol, d.reason_code) for d in events_of(first[SID], OrderDenied)] == [("BBB", CODE_RESTRICTED)]
    assert engine.hosts[SID].config == engine.config and engine.hosts["other"].config == engine.config
    assert engine.status()[SID]["limits"]["max_order_notional"] == 0.0


def test_set_limits_when_the_order_rate_changes_then_the_new_rate_counts_from_the_next_order() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.2, "BBB": 0.2})}, config())
    engine.process(bar(0, PRICES))

    engine.set_limits(SID, PreTradeLimits(max_order_rate=1))
    result = engine.process(bar(1, PRICES)).results[SID]

    assert [type(d).__name__ for d in result.decisions] == ["OrderAccepted", "OrderDenied"]


def test_check_phase_env_when_the_paper_phase_instance_points_at_a_live_endpoint_then_refused() -> None:
    check_phase_env(ExecutionSettings(strategies="m=a:B", broker="alpaca", phase_env="live", alpaca_paper=False))
    check_phase_env(ExecutionSettings(strategies="m=a:B", broker="exchange", phase_env="paper"))

    with pytest.raises(ValueError, match="QMP_ALPACA_PAPER=false"):
        check_phase_env(ExecutionSettings(strategies="m=a:B", broker="alpaca", phase_env="paper", alpaca_paper=False))
    with pytest.raises(ValueError, match="QMP_EXCHANGE_SANDBOX=false"):
        check_phase_env(ExecutionSettings(strategies="m=a:B", broker="exchange", phase_env="paper",
                                          exchange_sandbox=False))

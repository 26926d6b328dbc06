"""The execution engine (engine/execution.py): every hosted strategy, chunks joined into one timestamp,
venues, malformed batches, replays of a batch, restore after a restart."""

import msgspec
import pytest
from execution_testkit import (
    CAPITAL,
    PRICES,
    SID,
    FixedWeights,
    Momentum,
    bar,
    config,
    engine_with,
    orders,
    random_walk,
    set_state,
)

from qmp_core.clock import NS_PER_DAY
from qmp_core.messages import (
    PortfolioSnapshot,
    RolloutPhase,
    RolloutState,
    codec,
    encode,
)
from qmp_core.validation import BatchRejected
from qmp_execution.engine import (
    CODE_HALTED,
)


def test_process_when_all_strategies_halted_then_orders_denied() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})})
    set_state(engine, "ALL.operator", status="HALTED", reason="market closed")
    engine.process(bar(0, PRICES))

    result = engine.process(bar(1, PRICES)).results[SID]

    assert [(type(d).__name__, d.reason_code) for d in result.decisions] == [("OrderDenied", CODE_HALTED)]


def test_process_when_batch_replayed_then_same_result_and_no_double_fill() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5, "BBB": 0.3})})
    engine.process(bar(0, PRICES))
    first = engine.process(bar(1, PRICES)).results[SID]
    book = engine.hosts[SID].portfolio.to_snapshot()

    again = engine.process(bar(1, PRICES)).results[SID]
    older = engine.process(bar(0, PRICES)).results

    assert again.replayed is True
    assert again.decisions == first.decisions
    assert again.snapshot == first.snapshot
    assert codec(PortfolioSnapshot).decode(encode(first.snapshot)) == first.snapshot
    assert older == {}
    assert engine.hosts[SID].portfolio.to_snapshot() == book
    assert [d.order_id for d in first.decisions] == [f"{SID}-{2 * NS_PER_DAY}-AAA", f"{SID}-{2 * NS_PER_DAY}-BBB"]
    assert [f.fill_id for f in first.fills] == [f"{d.order_id}-f1" for d in first.decisions]


def test_restore_when_from_snapshot_then_subsequent_orders_identical() -> None:
    batches = random_walk(60, ["AAA", "BBB", "CCC"], seed=7)
    original = engine_with({SID: Momentum()})
    results = [original.process(b).results[SID] for b in batches]
    cut = 35
    assert any(r.decisions for r in results[cut + 1 :])

    restarted = engine_with({SID: Momentum()})
    restarted.restore(results[cut].snapshot)
    restarted.warm(reversed(batches[: cut + 1]))
    replayed = [restarted.process(b).results[SID] for b in batches[cut + 1 :]]

    assert [r.decisions for r in replayed] == [r.decisions for r in results[cut + 1 :]]
    assert [r.fills for r in replayed] == [r.fills for r in results[cut + 1 :]]
    assert replayed[-1].snapshot == results[-1].snapshot


def test_restore_when_last_batch_redelivered_then_nothing_traded_again() -> None:
    batches = random_walk(10, ["AAA", "BBB"], seed=3)
    original = engine_with({SID: Momentum()})
    snapshot = [original.process(b).results[SID] for b in batches][-1].snapshot

    restarted = engine_with({SID: Momentum()})
    restarted.restore(snapshot)

    assert restarted.process(batches[-1]).results == {}
    assert restarted.hosts[SID].portfolio.to_snapshot() == snapshot


def test_process_when_chunks_arrive_then_trades_once_all_have_arrived() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5, "BBB": 0.5})})
    for day in (0, 1):
        first = engine.process(bar(day, {"AAA": 50.0}, chunk=0, chunks=2))
        second = engine.process(bar(day, {"BBB": 200.0}, chunk=1, chunks=2))
        assert first.complete is False and first.results == {}
        assert second.complete is True

    assert set(orders(second.results[SID])) == {"AAA", "BBB"}


def test_process_when_batch_malformed_then_rejected() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})})
    broken = msgspec.structs.replace(bar(0, PRICES), close=[1.0])

    with pytest.raises(BatchRejected, match="column lengths differ"):
        engine.process(broken)


def test_process_when_row_invalid_then_row_reported_and_rest_traded() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5, "BBB": 0.5})})
    engine.process(bar(0, PRICES))
    bad = msgspec.structs.replace(bar(1, PRICES), close=[PRICES["AAA"], -1.0])

    result = engine.process(bad)

    assert [symbol for symbol, _ in result.rejected] == ["BBB"]
    assert set(orders(result.results[SID])) == {"AAA"}


# ---------------------------------------------------------------- one venue per strategy
def test_process_when_other_venue_sends_far_future_batch_then_strategy_keeps_trading_its_own() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})})
    engine.process(bar(0, PRICES))
    poisoned = msgspec.structs.replace(bar(0, {"AAA": 1e6}), venue="other", ts_event=4_102_444_800 * 10**9)
    assert engine.process(poisoned).results == {}  # not its venue: neither its time nor its prices
    result = engine.process(bar(1, PRICES)).results[SID]
    assert result.snapshot.ts_event == bar(1, PRICES).ts_event
    assert result.snapshot.equity == pytest.approx(CAPITAL, rel=1e-3)  # marked at 50, not at 1e6
    assert result.snapshot.venue == "test"


def test_process_when_venue_configured_then_batches_of_others_ignored_even_first() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})}, config(venue="test"))
    other = msgspec.structs.replace(bar(0, PRICES), venue="other")
    assert engine.process(other).results == {} and not engine.follows("other")
    assert SID in engine.process(bar(1, PRICES)).results


def test_restore_when_snapshot_names_venue_then_strategy_stays_bound_to_it() -> None:
    first = engine_with({SID: FixedWeights({"AAA": 0.5})})
    snapshot = first.process(bar(0, PRICES)).results[SID].snapshot
    restarted = engine_with({SID: FixedWeights({"AAA": 0.5})})
    restarted.restore(codec(PortfolioSnapshot).decode(encode(snapshot)))
    assert restarted.process(msgspec.structs.replace(bar(1, PRICES), venue="other")).results == {}
    assert SID in restarted.process(bar(1, PRICES)).results


def test_engine_when_capital_names_unhosted_strategy_then_fails_fast() -> None:
    with pytest.raises(ValueError, match="not hosted"):
        engine_with({SID: FixedWeights({})}, config(capital={"ghost": 1.0}))


def test_adopt_when_a_difference_has_one_owner_then_booked_at_its_last_price_and_the_rest_left() -> None:
    engine = engine_with({"a": FixedWeights({"AAA": 0.3}), "b": FixedWeights({"AAA": 0.2, "BBB": 0.3})},
                         config(broker="paper"))
    for day in range(2):
        engine.process(bar(day, PRICES))
    a, b = engine.hosts["a"].portfolio, engine.hosts["b"].portfolio
    held_bbb = b.positions["BBB"]
    differences = [("AAA", a.positions["AAA"] + b.positions["AAA"], 1.0),  # held by both: whose?
                   ("BBB", held_bbb, held_bbb + 7.0),  # held by b only
                   ("TSLA", 0.0, 3.0)]  # held by nobody, with two strategies on the account: whose?

    results, left = engine.adopt(differences, ts_event=99)

    assert list(results) == ["b"] and [d[0] for d in left] == ["AAA", "TSLA"]
    [fill] = results["b"].fills
    assert (fill.symbol, fill.side, fill.quantity, fill.price, fill.fee) == ("BBB", "BUY", 7.0, 200.0, 0.0)
    assert b.positions["BBB"] == held_bbb + 7.0 and fill.order_id == "b-adopted-99-BBB"
    assert results["b"].snapshot.equity == pytest.approx(b.equity())


def test_adopt_when_one_strategy_on_the_account_then_a_symbol_it_never_priced_is_left() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.3})}, config(broker="paper"))
    for day in range(2):
        engine.process(bar(day, PRICES))

    results, left = engine.adopt([("BBB", 0.0, -4.0), ("ZZZ", 0.0, 2.0)], ts_event=5)

    assert engine.hosts[SID].portfolio.positions["BBB"] == -4.0 and [d[0] for d in left] == ["ZZZ"]
    assert [(f.symbol, f.side, f.quantity) for f in results[SID].fills] == [("BBB", "SELL", 4.0)]


# ---------------------------------------------------------------- rollouts: deployment ids, venue per phase
def rollout(rollout_id: str, phase_index: int, sid: str = SID) -> RolloutState:
    """A rollout on the default plan's shape: paper, then two live phases."""
    phases = [RolloutPhase(name="paper", env="paper", allocation=0.1, min_soak_s=0.0),
              RolloutPhase(name="live_10", env="live", allocation=0.1, min_soak_s=0.0),
              RolloutPhase(name="live_100", env="live", allocation=1.0, min_soak_s=0.0)]
    return RolloutState(strategy=sid, rollout_id=rollout_id, plan="test", phases=phases, phase_index=phase_index)


def test_follow_rollout_when_orders_decided_then_each_order_and_fill_carries_the_rollout_id() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5, "BBB": -0.3})})
    engine.follow_rollout(SID, rollout("r-1", 0))
    engine.process(bar(0, PRICES))

    result = engine.process(bar(1, PRICES)).results[SID]

    assert result.decisions and {d.deployment_id for d in result.decisions} == {"r-1"}
    assert result.fills and {f.deployment_id for f in result.fills} == {"r-1"}


def test_follow_rollout_when_redeployed_while_an_order_works_then_its_fills_keep_the_rollout_it_was_sent_in() -> None:
    # 1% of a bar's volume per bar: the order works over many bars.
    strategy = FixedWeights({"AAA": 0.5})
    engine = engine_with({SID: strategy}, config(paper={"max_bar_participation": 0.01}))
    engine.follow_rollout(SID, rollout("r-1", 0))
    engine.process(bar(0, {"AAA": 100.0}, volume=1e4))
    first = engine.process(bar(1, {"AAA": 100.0}, volume=1e4)).results[SID]
    assert first.snapshot.working and first.snapshot.working[0].deployment_id == "r-1"
    engine.follow_rollout(SID, rollout("r-2", 0))
    strategy.weights["AAA"] = 0.6  # wants more: the working order keeps working, not replaced

    later = engine.process(bar(2, {"AAA": 100.0}, volume=1e4)).results[SID]

    assert later.fills and {f.deployment_id for f in later.fills} == {"r-1"}
    restored = engine_with({SID: FixedWeights({"AAA": 0.5})})
    restored.restore(later.snapshot)  # a restart keeps it too
    assert restored.hosts[SID].portfolio.working["AAA"].deployment_id == "r-1"


def test_follow_rollout_when_it_trades_from_an_account_then_orders_are_sized_on_its_budget_not_the_books_capital(
) -> None:
    whole = engine_with({SID: FixedWeights({"AAA": 0.5, "BBB": -0.3})})
    quarter = engine_with({SID: FixedWeights({"AAA": 0.5, "BBB": -0.3})})
    capital = quarter.hosts[SID].capital
    quarter.follow_rollout(SID, msgspec.structs.replace(rollout("r-1", 0), account="main", budget=capital / 4))
    for engine in (whole, quarter):
        engine.process(bar(0, PRICES))

    full = orders(whole.process(bar(1, PRICES)).results[SID])
    sized = orders(quarter.process(bar(1, PRICES)).results[SID])

    assert quarter.hosts[SID].budget_share == 0.25 and full.keys() == sized.keys() == {"AAA", "BBB"}
    assert all(sized[s] == pytest.approx(full[s] / 4, rel=0.02) for s in full)
    more = msgspec.structs.replace(rollout("r-2", 0), account="main", budget=capital * 3)
    quarter.follow_rollout(SID, more)
    assert quarter.hosts[SID].budget_share == 1.0  # never above the book's capital
    quarter.follow_rollout(SID, None)
    assert quarter.hosts[SID].budget_share == 1.0


def test_follow_rollout_when_instance_trades_live_phases_then_a_paper_phase_gets_no_capital_here() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})}, config(phase_env="live"))
    assert engine.state(SID).allocation == 0.0  # no rollout yet: nothing at the live venue
    engine.process(bar(0, PRICES))
    assert not orders(engine.process(bar(1, PRICES)).results[SID])

    engine.follow_rollout(SID, rollout("r-1", 1))  # promoted to live_10
    bought = engine.process(bar(2, PRICES)).results[SID]
    assert orders(bought)["AAA"] > 0 and engine.status()[SID]["elsewhere"] == ""

    engine.follow_rollout(SID, rollout("r-1", 0))  # rolled back to paper: wound down here
    sold = engine.process(bar(3, PRICES)).results[SID]
    assert orders(sold)["AAA"] == pytest.approx(-orders(bought)["AAA"])
    assert "paper phase" in engine.status()[SID]["elsewhere"]


def test_follow_rollout_when_instance_trades_paper_phases_then_promotion_to_live_winds_it_down() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})}, config(phase_env="paper"))
    engine.process(bar(0, PRICES))
    bought = engine.process(bar(1, PRICES)).results[SID]  # no rollout: paper trading
    assert orders(bought)["AAA"] > 0

    engine.follow_rollout(SID, rollout("r-1", 1))
    sold = engine.process(bar(2, PRICES)).results[SID]

    assert orders(sold)["AAA"] == pytest.approx(-orders(bought)["AAA"])
    assert engine.follow_rollout("not-hosted", rollout("r-9", 1, "not-hosted")) is False


def test_follow_rollout_when_instance_trades_any_phase_then_allocation_is_the_control_entries_alone() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})})
    for index in (-1, 0, 1, 2):
        engine.follow_rollout(SID, rollout("r-1", index))
        assert engine.state(SID).allocation == 1.0

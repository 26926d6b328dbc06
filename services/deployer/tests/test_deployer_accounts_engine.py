"""Accounts and capital in the rollout engine: a deploy or a promotion that would make an account's live
allocations exceed its capital is refused with the figures; account requests that would break the rule too."""

import msgspec
import pytest
from deployer_testkit import Bench

from qmp_core.messages import Abort, Account, Deploy, Promote, RolloutState, SetAccount
from qmp_core.rollout_state import capital_held
from qmp_deployer.engine.accounts import decide_account


def account(capital: float = 1_000_000.0, name: str = "main") -> Account:
    return Account(account=name, venue="paper", currency="USD", capital=capital, sender="alice")


def on_account(strategy: str, accounts: dict[str, Account], rollouts: dict[str, RolloutState],
               budget: float | None = None, name: str = "main") -> Bench:
    bench = Bench(strategy=strategy, accounts=accounts, rollouts=rollouts)
    outcome = bench.send(Deploy(plan="test", env="paper", confirm_live=True, account=name, budget=budget,
                                command_id=f"{strategy}-deploy"))
    assert outcome.accepted, outcome.reason
    return bench


def walk_to(bench: Bench, phase: str) -> None:
    bench.run_until(lambda b: b.phase == phase, max_minutes=10 * 60)


def test_deploy_when_the_account_is_unknown_or_the_budget_over_its_capital_then_refused_with_the_reason():
    bench = Bench(accounts={"main": account(100_000.0)})

    unknown = bench.send(Deploy(plan="test", env="paper", account="other", command_id="c1"))
    over = bench.send(Deploy(plan="test", env="paper", account="main", budget=150_000.0, command_id="c2"))

    assert not unknown.accepted and "account 'other' does not exist" in unknown.reason
    assert not over.accepted and "budget 150,000.00 is over account main's capital of 100,000.00 USD" in over.reason
    assert bench.state is None and bench.controls == []


def test_deploy_when_no_budget_given_then_the_strategy_has_the_whole_capital_and_paper_holds_none():
    accounts, rollouts = {"main": account(250_000.0)}, {}
    bench = on_account("s1", accounts, rollouts)

    assert bench.state is not None
    assert (bench.state.account, bench.state.budget) == ("main", 250_000.0)
    assert capital_held(bench.state) == 0.0  # paper trades no capital
    walk_to(bench, "live_10")
    assert capital_held(bench.state) == pytest.approx(25_000.0)


def test_promotion_when_two_strategies_would_exceed_the_account_then_blocked_with_the_figures_until_room_is_made():
    accounts, rollouts = {"main": account(1_000_000.0)}, {}
    first = on_account("s1", accounts, rollouts, budget=1_000_000.0)
    walk_to(first, "live_50")  # holds 500,000
    second = on_account("s2", accounts, rollouts, budget=600_000.0)
    walk_to(second, "live_50")  # 300,000 more: 800,000 of 1,000,000 held
    assert sum(capital_held(s) for s in rollouts.values()) == pytest.approx(800_000.0)

    # s1 soaked at 50% and approved for 100%: 1,000,000 + 300,000 would exceed the account.
    approval = first.send(Promote(full=True, expected_phase="live_50", command_id="p1"))
    first.run_until(lambda b: b.kinds().count("promotion_blocked") > 0, max_minutes=3 * 60)

    assert approval.accepted  # recorded while the phase soaks: the capital check comes at the promotion
    blocked = [e for e in first.events if e.kind == "promotion_blocked"][-1]
    assert blocked.reason == ("capital: account main would hold 1,300,000.00 USD of live allocations, over its "
                              "capital of 1,000,000.00 (300,000.00 held by its other strategies, 1,000,000.00 "
                              "asked by s1)")
    assert first.phase == "live_50" and first.state is not None and first.state.allocation == 0.5

    # s2 is aborted: its capital is free, and s1 walks on to 100%.
    assert second.send(Abort(reason="make room", command_id="a2")).accepted
    walk_to(first, "live_100")
    assert first.state is not None and capital_held(first.state) == pytest.approx(1_000_000.0)


def test_operator_promote_when_it_would_exceed_the_account_then_refused_with_the_reason():
    accounts, rollouts = {"main": account(100_000.0)}, {}
    first = on_account("s1", accounts, rollouts)
    walk_to(first, "live_50")  # 50,000 held
    second = Bench(strategy="s2", accounts=accounts, rollouts=rollouts, plan=first.plan)
    assert second.send(Deploy(plan="test", env="paper", auto=False, account="main", budget=100_000.0,
                              confirm_live=True, command_id="s2-deploy")).accepted
    second.run_until(lambda b: b.state is not None and b.state.status == "READY", max_minutes=3 * 60)
    assert second.send(Promote(expected_phase="paper", command_id="s2-p1")).accepted  # live_10: 10,000 more
    second.run_until(lambda b: b.state is not None and b.state.status == "READY", max_minutes=3 * 60)

    fits = second.send(Promote(expected_phase="live_10", command_id="s2-p2"))  # live_50: 50,000 + 50,000 fits

    assert fits.accepted, fits.reason
    second.run_until(lambda b: "promotion_blocked" in b.kinds(), max_minutes=3 * 60)  # soaked; 100% won't fit
    over = second.send(Promote(full=True, expected_phase="live_50", command_id="s2-p3"))
    assert not over.accepted
    assert "promotion refused: capital: account main would hold 150,000.00 USD" in over.reason


def test_deploy_next_when_it_names_another_account_or_budget_then_refused_while_the_rollout_runs():
    accounts, rollouts = {"main": account(), "other": account(name="other")}, {}
    bench = on_account("s1", accounts, rollouts, budget=100_000.0)

    moved = bench.send(Deploy(plan="test", env="live", account="other", command_id="d2"))
    resized = bench.send(Deploy(plan="test", env="live", budget=200_000.0, command_id="d3"))

    assert not moved.accepted and "abort it and deploy again to change its account" in moved.reason
    assert not resized.accepted and "budget is 100,000.00 in this rollout" in resized.reason


def test_redeploy_when_the_account_is_not_named_again_then_kept_with_its_budget():
    accounts, rollouts = {"main": account(500_000.0)}, {}
    bench = on_account("s1", accounts, rollouts, budget=200_000.0)
    assert bench.send(Abort(reason="again", command_id="a1")).accepted

    again = bench.send(Deploy(plan="test", env="paper", command_id="d2"))

    assert again.accepted and bench.state is not None
    assert (bench.state.account, bench.state.budget) == ("main", 200_000.0)


def test_decide_account_when_capital_would_drop_below_what_rollouts_hold_then_refused():
    accounts, rollouts = {"main": account(1_000_000.0)}, {}
    bench = on_account("s1", accounts, rollouts, budget=800_000.0)
    walk_to(bench, "live_50")  # 400,000 held

    lower = decide_account("main", "alice", SetAccount(capital=300_000.0), accounts["main"], rollouts, 1)
    enough = decide_account("main", "alice", SetAccount(capital=400_000.0), accounts["main"], rollouts, 2)
    remove = decide_account("main", "alice", SetAccount(remove=True), accounts["main"], rollouts, 3)
    venue = decide_account("main", "alice", SetAccount(capital=1e6, venue="alpaca"), accounts["main"], rollouts, 4)

    assert not lower.accepted and "below the 400,000.00 that live allocations of s1 hold" in lower.reason
    assert enough.accepted and enough.account is not None and enough.account.capital == 400_000.0
    assert enough.record is not None and enough.record.before == accounts["main"]
    assert not remove.accepted and "traded from by s1" in remove.reason
    assert not venue.accepted and "venue cannot change" in venue.reason


def test_decide_account_when_a_service_asks_or_nothing_changes_then_no_record():
    current = account(1_000.0)

    service = decide_account("main", "risk", SetAccount(capital=5.0), current, {}, 1)
    same = decide_account("main", "bob", SetAccount(capital=1_000.0), current, {}, 2)
    missing = decide_account("nope", "bob", SetAccount(remove=True), None, {}, 3)
    no_capital = decide_account("main", "bob", SetAccount(), current, {}, 4)
    removed = decide_account("main", "bob", SetAccount(remove=True, reason="closed"), current, {}, 5)

    assert not service.accepted and "set by an operator" in service.reason
    assert same.accepted and same.record is None and same.reason == "the account is already so"
    assert missing.accepted and missing.record is None
    assert not no_capital.accepted and "capital is required" in no_capital.reason
    assert removed.accepted and removed.account is None and removed.record is not None
    assert (removed.record.before, removed.record.after, removed.record.reason) == (current, None, "closed")


def test_capital_held_when_aborted_or_without_account_then_none():
    state = RolloutState(strategy="s", rollout_id="r", plan="p", phases=[], account="main", budget=10.0)
    assert capital_held(state) == 0.0  # no phase
    bench = on_account("s1", {"main": account()}, {})
    walk_to(bench, "live_10")
    assert bench.state is not None
    assert capital_held(msgspec.structs.replace(bench.state, status="ABORTED")) == 0.0
    assert capital_held(msgspec.structs.replace(bench.state, account="")) == 0.0

"""The rollout phase machine with a test clock: every transition, every verb in every state."""

from datetime import UTC, datetime

import msgspec
import pytest
from deployer_testkit import MINUTE, Bench, make_plan

from qmp_core.clock import NS_PER_HOUR
from qmp_core.messages import (
    NO_PHASE,
    Abort,
    Defensive,
    Deploy,
    GetRolloutStatus,
    Halt,
    HaltRollout,
    Pause,
    Promote,
    ReduceOrderSize,
    ReleaseSafeMode,
    Resume,
    ResumeRollout,
    Rollback,
    RolloutState,
    SetAllocation,
    TradingState,
    codec,
    encode,
)
from qmp_core.rollout_state import soak_remaining
from qmp_deployer.engine.plan import Blackout
from qmp_deployer.engine.rollout import is_due, restore


def allocations(bench: Bench) -> list[float]:
    return [c.allocation for c in bench.controls if isinstance(c, SetAllocation)]


def deployed(auto: bool = True, confirm_live: bool = True, **plan_changes: object) -> Bench:
    bench = Bench(make_plan(**plan_changes) if plan_changes else None)
    outcome = bench.send(Deploy(plan="test", confirm_live=confirm_live, env="paper", auto=auto,
                                command_id="c-deploy"))
    assert outcome.accepted, outcome.reason
    return bench


def walk_to(bench: Bench, phase: str) -> None:
    bench.run_until(lambda b: b.phase == phase, max_minutes=10 * 60)


# ---------------------------------------------------------------- deploy and soak
def test_deploy_when_no_rollout_then_soaking_in_paper_with_its_allocation_set():
    bench = deployed()
    assert bench.state is not None
    assert (bench.phase, bench.state.status, bench.state.allocation) == ("paper", "SOAKING", 0.1)
    assert allocations(bench) == [0.1]
    assert all(c.issued_by == "deployer" and c.command_id.endswith("-e1") for c in bench.controls)
    assert bench.kinds() == ["deployed", "live_confirmed"]  # deployed() confirms live trading up front
    assert bench.events[0].command_id == "c-deploy"


def test_deploy_when_the_strategy_is_all_then_refused_because_all_names_every_strategy():
    # found by fuzzing the deploy subject: a rollout of "ALL" would write the deployer's allocation for
    # every strategy at once (ALL is the every-strategy token of control commands).
    bench = Bench(strategy="ALL")

    outcome = bench.send(Deploy(plan="test", confirm_live=True, env="paper", command_id="c-all"))

    assert not outcome.accepted and "names every strategy" in outcome.reason
    assert bench.state is None and bench.controls == []


def test_soak_when_time_not_yet_served_then_no_promotion_and_promotes_when_served():
    bench = deployed()
    minutes = bench.run_until(lambda b: b.phase == "live_10")
    # Soak counts from the first evaluation (the anchor), so the hour is served at the 61st minute.
    assert 60 <= minutes <= 61
    assert allocations(bench) == [0.1]  # live_10 has paper's allocation: nothing to rewrite
    promoted = [e for e in bench.events if e.kind == "promoted"]
    assert promoted[0].phase_from == "paper" and promoted[0].phase_to == "live_10"
    assert promoted[0].metrics["drawdown"] == pytest.approx(0.01)
    assert promoted[0].thresholds["drawdown"] == [0.10, 0.15]


def test_soak_when_fills_missing_then_waits_for_the_minimum_fills():
    bench = deployed()
    bench.fill()
    for _ in range(90):  # 90 clean minutes, but only one fill
        bench.clock.advance(MINUTE)
        bench.snapshot()
        bench.evaluate()
    assert bench.phase == "paper"
    assert soak_remaining(bench.state) == (0.0, 1, 0.0)
    bench.step()  # the second fill
    assert bench.phase == "live_10"


def test_walk_when_gates_stay_clean_then_each_phase_in_turn_and_last_waits_for_approval():
    bench = deployed()
    walk_to(bench, "live_50")
    bench.run_until(lambda b: b.state.status == "AWAITING_APPROVAL")
    assert bench.phase == "live_50"
    phases = [(e.phase_from, e.phase_to) for e in bench.events if e.kind == "promoted"]
    assert phases == [("paper", "live_10"), ("live_10", "live_50")]
    refused = bench.send(Promote(expected_phase="live_50", command_id="p1"))
    assert not refused.accepted and "approval" in refused.reason
    approved = bench.send(Promote(expected_phase="live_50", full=True, command_id="p2"))
    assert approved.accepted, approved.reason
    assert (bench.phase, bench.state.allocation) == ("live_100", 1.0)
    bench.run_until(lambda b: b.state.status == "COMPLETE")
    assert bench.kinds()[-1] == "completed"


def test_promote_full_when_given_early_then_last_promotion_needs_no_further_approval():
    bench = deployed()
    outcome = bench.send(Promote(expected_phase="paper", full=True, command_id="early"))
    assert outcome.accepted and bench.state.approved_full
    assert bench.phase == "paper"  # approval never skips a soak
    walk_to(bench, "live_100")
    assert "awaiting_approval" not in bench.kinds()


def test_manual_rollout_when_soaked_then_ready_and_promote_moves_exactly_one_phase():
    bench = deployed(auto=False)
    bench.run_until(lambda b: b.state.status == "READY")
    assert bench.phase == "paper"
    first = bench.send(Promote(expected_phase="paper", command_id="p1"))
    assert first.accepted and bench.phase == "live_10"
    again = bench.send(Promote(expected_phase="paper", command_id="p1-retry"))
    assert not again.accepted and "expected phase 'paper'" in again.reason
    assert bench.phase == "live_10"


def test_walk_when_live_not_confirmed_then_waits_before_the_first_live_phase_until_the_operator_confirms():
    bench = deployed(confirm_live=False)
    bench.run_until(lambda b: b.state.status == "AWAITING_APPROVAL")
    waiting = bench.state
    plain = bench.send(Promote(expected_phase="paper", command_id="p-1"))
    confirmed = bench.send(Promote(expected_phase="paper", confirm_live=True, command_id="p-2"))

    assert waiting.phases[waiting.phase_index].env == "paper" and not waiting.live_confirmed
    assert waiting.hold_reason.endswith("--confirm-live")  # what `qmp rollout status` shows
    assert [e.reason for e in bench.events if e.kind == "awaiting_approval"] == [
        "live_10 is the first live phase: live trading needs the operator's confirmation: --confirm-live"]
    assert not plain.accepted and "--confirm-live" in plain.reason
    assert confirmed.accepted and bench.phase == "live_10" and bench.state.live_confirmed
    assert bench.kinds()[-2:] == ["live_confirmed", "promoted"]
    walk_to(bench, "live_50")  # later live phases do not ask again


def test_confirm_live_when_given_during_the_paper_soak_then_recorded_and_the_walk_goes_on_unattended():
    bench = deployed(confirm_live=False)
    recorded = bench.send(Promote(expected_phase="paper", confirm_live=True, command_id="p-early"))

    assert recorded.accepted and "confirmed" in recorded.reason and bench.phase == "paper"
    walk_to(bench, "live_10")
    assert bench.state.live_confirmed and "live_confirmed" in bench.kinds()


def test_deploy_when_env_live_with_allocation_after_paper_soaked_then_moves_to_live_10_only():
    bench = deployed(auto=False)
    early = bench.send(Deploy(plan="test", env="live", allocation=0.1, command_id="d-early"))
    assert not early.accepted and "soak" in early.reason
    bench.run_until(lambda b: b.state.status == "READY")
    moved = bench.send(Deploy(plan="test", env="live", allocation=0.1, command_id="d-live"))
    assert moved.accepted, moved.reason
    assert bench.phase == "live_10"
    repeated = bench.send(Deploy(plan="test", env="live", allocation=0.1, command_id="d-live-2"))
    assert not repeated.accepted and "already in phase" in repeated.reason


def test_deploy_when_live_first_then_rejected_because_a_rollout_starts_in_paper():
    bench = Bench()
    outcome = bench.send(Deploy(plan="test", confirm_live=True, env="live", allocation=0.1, command_id="x"))
    assert not outcome.accepted and "paper" in outcome.reason
    assert bench.state is None and bench.controls == []


def test_deploy_when_allocation_overrides_next_phase_outside_neighbours_then_rejected():
    bench = deployed(auto=False)
    bench.run_until(lambda b: b.state.status == "READY")
    outcome = bench.send(Deploy(plan="test", confirm_live=True, env="live", allocation=0.7, command_id="d"))
    assert not outcome.accepted and "within" in outcome.reason
    inside = bench.send(Deploy(plan="test", confirm_live=True, env="live", allocation=0.2, command_id="d2"))
    assert inside.accepted and bench.state.allocation == 0.2 and allocations(bench)[-1] == 0.2


def test_deploy_when_plan_unknown_or_strategy_not_known_then_rejected():
    bench = Bench()
    assert "unknown plan" in bench.send(Deploy(plan="nope", command_id="a")).reason
    bench.known = frozenset({"other"})
    assert "unknown strategy" in bench.send(Deploy(plan="test", confirm_live=True, command_id="b")).reason
    assert bench.state is None


# ---------------------------------------------------------------- gates
def test_warning_when_drawdown_breached_then_holds_reduces_allocation_once_and_soak_clock_stops():
    bench = deployed()
    for _ in range(10):
        bench.step()
    elapsed = bench.state.soak_elapsed_ns
    for _ in range(5):
        bench.step(drawdown=0.12)
    assert bench.state.status == "HOLDING"
    assert allocations(bench) == [0.1, pytest.approx(0.05)]  # reduced by 50%, once
    assert bench.state.soak_elapsed_ns == elapsed + MINUTE  # only the minute before the hold counted
    bench.step()
    assert bench.state.status == "SOAKING"
    assert bench.kinds().count("held") == 1 and "soak_resumed" in bench.kinds()
    bench.step(drawdown=0.12)
    assert allocations(bench) == [0.1, pytest.approx(0.05)]  # never re-run in the same phase


def test_warning_when_var_breached_then_new_positions_halted_until_clean():
    bench = deployed()
    bench.step(var=0.06)
    assert bench.state.defensive and isinstance(bench.controls[-1], Defensive) and bench.controls[-1].on
    bench.step()
    assert not bench.state.defensive
    assert isinstance(bench.controls[-1], Defensive) and not bench.controls[-1].on


def test_warning_when_slippage_breached_then_order_size_reduced_until_clean():
    bench = deployed()
    for _ in range(20):
        bench.clock.advance(MINUTE)
        bench.fill(slippage_bps=30.0)
    bench.snapshot()
    bench.evaluate()
    assert bench.state.size_multiplier == 0.5
    assert isinstance(bench.controls[-1], ReduceOrderSize) and bench.controls[-1].factor == 0.5


def test_critical_when_drawdown_past_failure_limit_then_rolls_back_with_halt_and_reason():
    bench = deployed()
    walk_to(bench, "live_50")
    bench.step(drawdown=0.2)
    state = bench.state
    assert (state.status, bench.phase, state.allocation) == ("ROLLED_BACK", "live_10", 0.1)
    halt = [c for c in bench.controls if isinstance(c, Halt)]
    assert len(halt) == 1 and "drawdown" in halt[0].reason
    event = bench.events[-1]
    assert event.kind == "rolled_back" and event.trigger == "gate drawdown critical"
    assert (event.phase_from, event.phase_to) == ("live_50", "live_10")
    assert (event.allocation_before, event.allocation_after) == (0.5, 0.1)
    assert event.metrics["drawdown"] == pytest.approx(0.2) and event.thresholds["drawdown"] == [0.10, 0.15]


def test_critical_when_below_failure_limit_then_holds_and_rolls_back_when_limit_reached():
    bench = deployed()
    walk_to(bench, "live_10")
    bench.step(var=0.09)
    assert bench.state.status == "HOLDING" and bench.phase == "live_10"
    bench.step(var=0.09)
    assert bench.state.status == "ROLLED_BACK" and bench.phase == "paper"


def test_rollback_when_in_paper_then_allocation_zero_and_resume_refused():
    bench = deployed()
    bench.step(drawdown=0.5)
    assert (bench.state.status, bench.phase, bench.state.allocation) == ("ROLLED_BACK", NO_PHASE, 0.0)
    outcome = bench.send(ResumeRollout(expected_phase=NO_PHASE, command_id="r"))
    assert not outcome.accepted and "deploy again" in outcome.reason


def test_rollback_when_allocation_was_reduced_then_never_raised_on_the_way_down():
    bench = deployed()
    walk_to(bench, "live_10")
    bench.step(drawdown=0.12)
    assert bench.state.allocation == pytest.approx(0.05)
    bench.send(Rollback(expected_phase="live_10", command_id="rb"))
    assert bench.phase == "paper" and bench.state.allocation == pytest.approx(0.05)


def test_gate_when_no_data_then_inconclusive_holds_and_alerts_without_actions():
    bench = deployed()
    bench.clock.advance(MINUTE)
    bench.evaluate()
    assert bench.state.status == "HOLDING"
    assert {g.level for g in bench.state.gates} == {"inconclusive"}
    assert "alert" in bench.kinds()
    assert allocations(bench) == [0.1] and not bench.state.defensive


def test_gate_when_risk_data_goes_stale_then_new_positions_halted_fail_closed_until_fresh():
    bench = deployed()
    bench.step()
    bench.clock.advance(20 * MINUTE)  # past stale_after_s = 900
    bench.fill()
    bench.evaluate()
    assert bench.state.status == "HOLDING" and bench.state.defensive
    assert {g.reading for g in bench.state.gates if g.metric in ("drawdown", "var_95")} == {"stale"}
    bench.step()
    assert bench.state.status == "SOAKING" and not bench.state.defensive


def test_gate_when_var_status_insufficient_then_inconclusive_hold_not_fail_closed():
    bench = deployed()
    bench.step(status="insufficient_data")
    gate = next(g for g in bench.state.gates if g.metric == "var_95")
    assert gate.level == "inconclusive" and gate.reading == "no_data"
    assert bench.state.status == "HOLDING" and not bench.state.defensive


def test_evaluate_when_advisory_action_breached_then_recorded_once_per_level_change():
    text = make_plan().metrics
    plan = make_plan(metrics={**text, "memory": msgspec.convert(
        {"source": "memory_mb", "warning": 2048, "critical": 4096, "action": "restart_service"},
        type(text["drawdown"]))})
    bench = Bench(plan)
    bench.send(Deploy(plan="test", confirm_live=True, command_id="d"))
    for _ in range(3):
        bench.monitor.on_probe("memory_mb", 3000.0, bench.clock.now_ns() + MINUTE)
        bench.step()
    actions = [e for e in bench.events if e.kind == "action" and "restart_service" in e.reason]
    assert len(actions) == 1 and "advisory" in actions[0].reason
    assert bench.state.status == "HOLDING"


def test_evaluate_when_api_latency_breached_then_backup_endpoint_pinned_until_clean():
    metrics = make_plan().metrics
    latency = msgspec.convert({"source": "latency_ms", "warning": 500, "critical": 1000, "action": "switch_endpoint",
                               "failure_limit": 3}, type(metrics["drawdown"]))
    bench = Bench(make_plan(metrics={**metrics, "api_latency": latency}))
    bench.send(Deploy(plan="test", confirm_live=True, command_id="d"))
    for value in (120.0, 700.0, 800.0, 90.0):
        bench.monitor.on_probe("latency_ms", value, bench.clock.now_ns() + MINUTE)
        bench.step()
    assert bench.endpoints == ["backup", "auto"]
    assert not bench.state.endpoint_backup and bench.state.status == "SOAKING"
    assert [e.reason for e in bench.events if "endpoint" in e.reason] == [
        "switch the broker to its backup endpoint", "broker endpoint back to its automatic choice"]


def test_evaluate_when_safe_mode_on_and_gates_clean_then_safe_mode_released():
    bench = deployed()
    bench.trading = TradingState(strategy="s1", safe_mode=True, size_multiplier=0.5)
    bench.step()
    assert isinstance(bench.controls[-1], ReleaseSafeMode)
    assert "safe_mode_released" in bench.kinds()


def test_evaluate_when_strategy_halted_by_another_source_then_soak_holds_until_lifted():
    bench = deployed()
    bench.step()
    elapsed = bench.state.soak_elapsed_ns
    bench.trading = TradingState(strategy="s1", status="HALTED", reason="drawdown", issued_by="risk")
    for _ in range(30):
        bench.step()
    assert bench.state.status == "HOLDING" and "HALTED by risk" in bench.state.hold_reason
    assert bench.state.soak_elapsed_ns == elapsed + MINUTE
    bench.trading = None
    bench.step()
    assert bench.state.status == "SOAKING"


def test_is_due_when_interval_not_elapsed_then_false():
    bench = deployed()
    bench.step()
    assert not is_due(bench.state, bench.clock.now_ns() + 30 * 10**9, bench.plan)
    assert is_due(bench.state, bench.clock.now_ns() + 60 * 10**9, bench.plan)


# ---------------------------------------------------------------- crash, restore
def test_restore_when_reloaded_after_downtime_then_same_phase_same_remaining_soak_and_no_repeated_actions():
    bench = deployed()
    for _ in range(20):
        bench.step()
    bench.step(drawdown=0.12)  # action: allocation halved
    bench.step()
    controls_before = len(bench.controls)
    remaining = soak_remaining(bench.state)
    stored = codec(RolloutState).decode(encode(bench.state))  # what the KV bucket holds
    bench.state = restore(stored)
    bench.clock.advance(5 * NS_PER_HOUR)  # down for five hours: not soak time
    bench.snapshot()
    bench.evaluate()
    assert bench.phase == "paper"
    assert soak_remaining(bench.state)[0] == remaining[0]
    assert len(bench.controls) == controls_before
    # Promotion comes only once the remaining soak is served after the restart.
    minutes = bench.run_until(lambda b: b.phase == "live_10")
    assert minutes == pytest.approx(remaining[0] / 60, abs=1)


def test_restore_when_never_evaluated_then_first_evaluation_only_anchors():
    bench = deployed()
    bench.state = restore(bench.state)
    bench.clock.advance(3 * NS_PER_HOUR)
    bench.snapshot()
    bench.fill()
    bench.fill()
    bench.evaluate()
    assert bench.state.soak_elapsed_ns == 0 and bench.phase == "paper"


def test_control_ids_when_decisions_differ_then_unique_and_carry_epoch():
    bench = deployed()
    walk_to(bench, "live_50")
    ids = [c.command_id for c in bench.controls]
    assert len(ids) == len(set(ids))
    assert all(i.endswith("-e1") for i in ids)


# ---------------------------------------------------------------- beyond the anchors
def test_promotion_when_in_calendar_blackout_then_blocked_until_it_ends():
    start = datetime.fromtimestamp(0, tz=UTC)
    plan = make_plan()
    end_ns = (1_700_000_000 + 3 * 3600)
    blackout = Blackout(start=start, end=datetime.fromtimestamp(end_ns, tz=UTC), reason="FOMC")
    bench = Bench(msgspec.structs.replace(plan, blackouts=[blackout]))
    bench.send(Deploy(plan="test", confirm_live=True, command_id="d"))
    for _ in range(120):
        bench.step()
    assert bench.phase == "paper"
    assert bench.kinds().count("promotion_blocked") == 1
    assert "FOMC" in bench.state.hold_reason
    refused = bench.send(Promote(expected_phase="paper", command_id="p"))
    assert not refused.accepted and "blackout" in refused.reason
    bench.run_until(lambda b: b.phase == "live_10", max_minutes=90)
    assert bench.clock.now_ns() >= end_ns * 10**9


def test_promotion_when_portfolio_var_would_exceed_budget_then_refused():
    bench = deployed(portfolio_var_limit=0.05)
    bench.var_book = {"s1": (0.02, 1e6), "big": (0.06, 1e6)}  # now 4%; live_10 at same allocation: 4%
    walk_to(bench, "live_10")
    bench.var_book = {"s1": (0.02, 1e6), "big": (0.06, 1e6)}  # live_50: s1 VaR × 5 → (0.10 + 0.06) / 2 = 8%
    for _ in range(120):
        bench.step()
    assert bench.phase == "live_10"
    assert "risk budget" in bench.state.hold_reason
    bench.var_book = {"s1": (0.02, 1e6), "big": (0.01, 1e6)}  # (0.10 + 0.01) / 2 = 5.5% still over
    bench.step()
    assert bench.phase == "live_10"
    bench.var_book = {"s1": (0.01, 1e6), "big": (0.01, 1e6)}  # (0.05 + 0.01) / 2 = 3%
    bench.step()
    assert bench.phase == "live_50"


def test_soak_when_exposure_required_then_waits_for_notional_hours():
    plan = make_plan()
    phases = list(plan.phases)
    phases[0] = msgspec.structs.replace(phases[0], min_notional_hours=2_000_000.0)
    bench = Bench(msgspec.structs.replace(plan, phases=phases))
    bench.send(Deploy(plan="test", confirm_live=True, command_id="d"))
    for _ in range(90):
        bench.step(exposure=0.0)
    assert bench.phase == "paper"
    assert soak_remaining(bench.state)[2] == pytest.approx(2_000_000.0)
    # 1,000,000 of gross exposure: two hours to serve 2,000,000 notional-hours.
    minutes = bench.run_until(lambda b: b.phase == "live_10", exposure=1_000_000.0)
    assert minutes == pytest.approx(120, abs=1)


# ---------------------------------------------------------------- verbs
def test_halt_when_soaking_then_halted_latched_and_resume_keeps_soak():
    bench = deployed()
    for _ in range(10):
        bench.step()
    elapsed = bench.state.soak_elapsed_ns
    bench.send(HaltRollout(reason="manual", command_id="h"))
    assert bench.state.status == "HALTED" and isinstance(bench.controls[-1], Halt)
    for _ in range(30):
        bench.step()
    assert bench.state.status == "HALTED"  # never clears itself
    assert bench.state.soak_elapsed_ns == elapsed
    bench.send(ResumeRollout(expected_phase="paper", command_id="r"))
    assert bench.state.status == "SOAKING" and isinstance(bench.controls[-1], Resume)
    assert bench.state.soak_elapsed_ns == elapsed


def test_pause_when_critical_breach_then_still_rolls_back():
    bench = deployed()
    walk_to(bench, "live_10")
    bench.send(Pause(expected_phase="live_10", command_id="p"))
    for _ in range(90):
        bench.step()
    assert bench.phase == "live_10" and bench.state.status == "PAUSED"
    bench.step(drawdown=0.3)
    assert bench.state.status == "ROLLED_BACK"


def test_abort_when_rolling_then_halted_allocation_zero_and_deploy_starts_a_new_rollout():
    bench = deployed()
    walk_to(bench, "live_10")
    first_id = bench.state.rollout_id
    bench.send(Abort(reason="bad idea", command_id="a"))
    assert bench.state.status == "ABORTED" and bench.state.allocation == 0.0
    assert isinstance(bench.controls[-2], Halt) and allocations(bench)[-1] == 0.0
    bench.step(drawdown=0.5)
    assert bench.state.status == "ABORTED"
    again = bench.send(Deploy(plan="test", confirm_live=True, command_id="d2"))
    assert again.accepted and bench.state.rollout_id != first_id and bench.phase == "paper"


def test_command_when_expected_phase_missing_or_wrong_then_rejected_and_state_untouched():
    bench = deployed()
    before = bench.state
    missing = bench.send(Pause(command_id="x"))
    wrong = bench.send(Pause(expected_phase="live_10", command_id="y"))
    assert not missing.accepted and "expected_phase" in missing.reason
    assert not wrong.accepted and "current phase is 'paper'" in wrong.reason
    assert bench.state is before


def test_command_when_no_rollout_then_unknown_strategy():
    bench = Bench()
    for command in (Promote(expected_phase="paper"), Pause(expected_phase="paper"), HaltRollout(), Abort(),
                    GetRolloutStatus()):
        outcome = bench.send(command)
        assert not outcome.accepted and "unknown strategy" in outcome.reason
    assert bench.controls == []


STATUSES = ["SOAKING", "HOLDING", "PAUSED", "READY", "AWAITING_APPROVAL", "COMPLETE", "ROLLED_BACK", "HALTED",
            "ABORTED"]


def bench_in(status: str) -> Bench:
    bench = deployed(auto=status != "READY")
    match status:
        case "HOLDING":
            bench.step(drawdown=0.12)
        case "PAUSED":
            bench.send(Pause(expected_phase="paper", command_id="setup"))
        case "READY":
            bench.run_until(lambda b: b.state.status == "READY")
        case "AWAITING_APPROVAL":
            bench.run_until(lambda b: b.state.status == "AWAITING_APPROVAL", max_minutes=10 * 60)
        case "COMPLETE":
            bench.send(Promote(expected_phase="paper", full=True, command_id="setup"))
            bench.run_until(lambda b: b.state.status == "COMPLETE", max_minutes=10 * 60)
        case "ROLLED_BACK":
            walk_to(bench, "live_10")
            bench.send(Rollback(expected_phase="live_10", command_id="setup"))
        case "HALTED":
            bench.send(HaltRollout(command_id="setup"))
        case "ABORTED":
            bench.send(Abort(command_id="setup"))
    assert bench.state.status == status
    return bench


# verb -> statuses in which it is accepted
ACCEPTED = {
    "deploy": {"ABORTED"},
    "promote": {"READY"},
    "promote_full": {"SOAKING", "HOLDING", "READY", "AWAITING_APPROVAL"},
    "pause": {"SOAKING", "HOLDING", "READY", "AWAITING_APPROVAL", "COMPLETE"},
    "resume": {"PAUSED", "ROLLED_BACK", "HALTED"},
    "rollback": set(STATUSES) - {"ABORTED"},
    "halt": set(STATUSES),
    "abort": set(STATUSES),
    "status": set(STATUSES),
}


def command_for(verb: str, phase: str):
    return {
        "deploy": Deploy(plan="test", confirm_live=True, command_id="v"),
        "promote": Promote(expected_phase=phase, command_id="v"),
        "promote_full": Promote(expected_phase=phase, full=True, command_id="v"),
        "pause": Pause(expected_phase=phase, command_id="v"),
        "resume": ResumeRollout(expected_phase=phase, command_id="v"),
        "rollback": Rollback(expected_phase=phase, command_id="v"),
        "halt": HaltRollout(command_id="v"),
        "abort": Abort(command_id="v"),
        "status": GetRolloutStatus(command_id="v"),
    }[verb]


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("verb", list(ACCEPTED))
def test_verb_when_sent_in_each_status_then_accepted_or_rejected_with_reason_changing_nothing(verb, status):
    bench = bench_in(status)
    before = bench.state
    controls_before = len(bench.controls)
    outcome = bench.send(command_for(verb, bench.phase))
    assert outcome.accepted == (status in ACCEPTED[verb]), outcome.reason
    if not outcome.accepted:
        assert outcome.reason
        assert bench.state is before and len(bench.controls) == controls_before
    elif verb == "status":
        assert bench.state is before
    else:
        assert bench.state is not before
        assert "v" in bench.state.recent_commands
        assert bench.events[-1].command_id == "v" and bench.events[-1].issued_by == "operator"


@pytest.mark.parametrize("status", STATUSES)
def test_halt_when_sent_with_a_stale_expected_phase_then_still_takes_priority(status):
    bench = bench_in(status)
    outcome = bench.send(HaltRollout(expected_phase="some_old_phase", command_id="h"))
    assert outcome.accepted
    assert isinstance(bench.controls[-1], Halt)
    assert bench.state.status in ("HALTED", "ABORTED")

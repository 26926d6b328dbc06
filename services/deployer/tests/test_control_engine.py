from qmp_core.messages import Halt, ReduceOrderSize, ReleaseSafeMode, Resume, SetAllocation, TradingState
from qmp_core.trading_state import effective_state
from qmp_deployer.engine import decide


def apply_all(strategy: str, commands: list, entries: dict | None = None) -> dict[str, TradingState]:
    entries = dict(entries or {})
    for ts, command in enumerate(commands, start=1):
        decision = decide(strategy, command, entries, ts)
        assert decision.accepted, decision.reason
        entries.update(decision.changed)
    return entries


def test_decide_when_operator_halts_then_effective_state_is_halted_with_reason():
    entries = apply_all("s1", [Halt(reason="fat finger")])
    state = effective_state("s1", entries)
    assert state.status == "HALTED"
    assert state.reason == "fat finger"


def test_decide_when_risk_halted_and_operator_resumes_then_every_latch_is_cleared():
    entries = apply_all("s1", [Halt(reason="dd", issued_by="risk"), Halt(reason="manual")])
    entries = apply_all("s1", [Resume(mode="normal")], entries)
    assert effective_state("s1", entries).status == "ACTIVE"


def test_decide_when_risk_tries_to_resume_then_rejected_and_nothing_changes():
    entries = apply_all("s1", [Halt(reason="dd", issued_by="risk")])
    decision = decide("s1", Resume(issued_by="risk"), entries, 10)
    assert not decision.accepted
    assert "operator" in decision.reason
    assert decision.changed == {}


def test_decide_when_resume_safe_then_half_size_until_safe_mode_released():
    entries = apply_all("s1", [Halt(reason="x"), Resume(mode="safe")])
    state = effective_state("s1", entries)
    assert (state.status, state.size_multiplier, state.safe_mode) == ("ACTIVE", 0.5, True)
    entries = apply_all("s1", [ReleaseSafeMode(issued_by="deployer")], entries)
    state = effective_state("s1", entries)
    assert (state.size_multiplier, state.safe_mode) == (1.0, False)


def test_decide_when_sources_disagree_then_most_restrictive_wins():
    entries = apply_all(
        "s1",
        [SetAllocation(allocation=0.5, issued_by="deployer"), SetAllocation(allocation=0.9),
         ReduceOrderSize(size_multiplier=0.5, issued_by="risk")],
    )
    state = effective_state("s1", entries)
    assert state.allocation == 0.5
    assert state.size_multiplier == 0.5


def test_decide_when_all_is_halted_then_every_strategy_is_halted_until_all_resumes():
    entries = apply_all("ALL", [Halt(reason="exchange outage")])
    entries = apply_all("s2", [Resume()], entries)
    assert effective_state("s2", entries).status == "HALTED"
    entries = apply_all("ALL", [Resume()], entries)
    assert effective_state("s2", entries).status == "ACTIVE"


def test_decide_when_operator_cut_order_size_then_a_safe_resume_and_its_release_keep_the_cut():
    # issue 11 #1: the release used to set the operator's entry back to 1.0, erasing its 0.5 cut.
    entries = apply_all("s1", [ReduceOrderSize(size_multiplier=0.3), Halt(reason="x"), Resume(mode="safe")])
    during = effective_state("s1", entries)
    entries = apply_all("s1", [ReleaseSafeMode(issued_by="deployer")], entries)
    after = effective_state("s1", entries)

    assert (during.size_multiplier, during.safe_mode) == (0.3, True)  # the tighter of the cut and safe mode
    assert (after.size_multiplier, after.safe_mode) == (0.3, False)


def test_decide_when_operator_cut_is_looser_than_safe_mode_then_half_size_until_release_then_the_cut():
    entries = apply_all("s1", [ReduceOrderSize(size_multiplier=0.8), Halt(reason="x"), Resume(mode="safe")])
    assert effective_state("s1", entries).size_multiplier == 0.5
    entries = apply_all("s1", [ReleaseSafeMode(issued_by="deployer")], entries)
    assert effective_state("s1", entries).size_multiplier == 0.8


def test_decide_when_normal_resume_then_every_sources_size_cut_outlives_it():
    entries = apply_all("s1", [ReduceOrderSize(size_multiplier=0.5),
                               ReduceOrderSize(size_multiplier=0.7, issued_by="risk"), Halt(reason="x"), Resume()])
    state = effective_state("s1", entries)
    assert (state.status, state.size_multiplier) == ("ACTIVE", 0.5)
    entries = apply_all("s1", [ReduceOrderSize(size_multiplier=1.0)], entries)  # the operator lifts its cut
    assert effective_state("s1", entries).size_multiplier == 0.7  # risk's stays

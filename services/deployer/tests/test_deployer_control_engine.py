from hypothesis import given
from hypothesis import strategies as st

from qmp_core.messages import Halt, Kill, ReduceOrderSize, ReleaseSafeMode, Resume, SetAllocation, TradingState
from qmp_core.trading_state import ControlEntries, effective_state
from qmp_deployer.engine import ControlRequest, decide, decide_in_order


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


def test_decide_when_killed_by_risk_and_operator_resumes_then_the_kill_is_lifted_everywhere():
    entries = apply_all("s1", [Kill(reason="runaway", flatten=True, issued_by="risk", command_id="k1")])
    killed = effective_state("s1", entries)
    entries = apply_all("s1", [Resume(mode="normal")], entries)

    assert (killed.status, killed.kill_id, killed.flatten, killed.reason) == ("HALTED", "k1", True, "runaway")
    assert effective_state("s1", entries).status == "ACTIVE"
    assert all(not e.kill_id and not e.flatten for e in entries.values())


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


def entries_of(mapping: dict[str, TradingState]) -> ControlEntries:
    entries = ControlEntries()
    for key, state in mapping.items():
        entries.set_entry(key, state)
    return entries


def test_decide_in_order_when_a_halt_overtook_an_earlier_resume_then_the_resume_is_refused_with_the_halted_state():
    entries = entries_of(apply_all("s1", [Halt(reason="first")]))
    batch = decide_in_order([ControlRequest("s1", Halt(reason="again"), arrival=3),
                             ControlRequest("s1", Resume(), arrival=2),
                             ControlRequest("s1", Resume(), arrival=4)], entries, {}, 10)

    halt, overtaken, later = batch.decisions
    assert halt.accepted and overtaken.accepted is False and "halt sent after this resume" in overtaken.reason
    assert overtaken.effective is not None and overtaken.effective.status == "HALTED"
    assert later.accepted and later.effective is not None and later.effective.status == "ACTIVE"
    assert batch.halt_arrivals == {"s1": 3}
    assert entries.effective("s1").status == "HALTED"  # the input is not changed


COMMANDS = st.one_of(
    st.builds(Halt, reason=st.sampled_from(["a", "b"]), issued_by=st.sampled_from(["operator", "risk"])),
    st.builds(Resume, mode=st.sampled_from(["normal", "safe"]), issued_by=st.sampled_from(["operator", "risk"])),
    st.builds(ReleaseSafeMode, issued_by=st.just("deployer")),
    st.builds(SetAllocation, allocation=st.sampled_from([0.0, 0.1, 0.5, 1.0])),
    st.builds(ReduceOrderSize, size_multiplier=st.sampled_from([0.25, 0.5, 1.0]),
              issued_by=st.sampled_from(["operator", "risk"])),
)


@given(st.lists(st.tuples(st.sampled_from(["s1", "s2", "ALL"]), COMMANDS), max_size=25))
def test_decide_in_order_when_commands_are_batched_then_same_replies_and_entries_as_one_at_a_time(
        requests: list[tuple[str, object]]) -> None:
    batch = decide_in_order([ControlRequest(strategy, command) for strategy, command in requests],
                            ControlEntries(), {}, 7)

    one_at_a_time: dict[str, TradingState] = {}
    for (strategy, command), batched in zip(requests, batch.decisions, strict=True):
        decision = decide(strategy, command, one_at_a_time, 7)
        assert decision.accepted == batched.accepted
        if decision.accepted:
            one_at_a_time.update(decision.changed)
        assert effective_state(strategy, one_at_a_time) == batched.effective
    assert {key: one_at_a_time[key] for key in batch.changed} == batch.changed
    assert set(batch.changed) == set(one_at_a_time)


def test_decide_in_order_when_requests_carry_traces_then_each_changed_entry_records_its_command_trace() -> None:
    halt_trace = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    resume_trace = "00-" + "3" * 32 + "-" + "4" * 16 + "-01"
    entries = ControlEntries()
    halted = decide_in_order([ControlRequest("s1", Halt(reason="breaker", issued_by="risk"), 1, halt_trace)],
                             entries, {}, 10)
    assert [entry.traceparent for entry in halted.changed.values()] == [halt_trace]
    assert halted.decisions[0].effective is not None and halted.decisions[0].effective.traceparent == halt_trace
    for key, entry in halted.changed.items():
        entries.set_entry(key, entry)
    resumed = decide_in_order([ControlRequest("s1", Resume(issued_by="operator"), 2, resume_trace)],
                              entries, {}, 20)
    # the resume rewrites risk's latched entry too: both name the resume's trace, none the halt's
    assert {entry.traceparent for entry in resumed.changed.values()} == {resume_trace}
    assert len(resumed.changed) == 2

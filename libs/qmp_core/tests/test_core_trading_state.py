"""The effective trading state: one rule for every reader, most restrictive wins, corrupt entries fail safe."""

from qmp_core import subjects
from qmp_core.messages import Defensive, Halt, Kill, Resume, TradingState, encode
from qmp_core.trading_state import ControlEntries, apply, combine, effective_state, grows_exposure


def test_combine_when_one_source_halts_then_halted_and_tightest_limits_win():
    entries = [
        TradingState(strategy="s", allocation=0.5, size_multiplier=1.0),
        TradingState(strategy="s", status="HALTED", reason="dd", allocation=1.0, size_multiplier=0.5),
    ]
    state = combine("s", entries)
    assert (state.status, state.reason, state.allocation, state.size_multiplier) == ("HALTED", "dd", 0.5, 0.5)


def test_combine_when_defensive_then_reducing():
    assert combine("s", [TradingState(strategy="s", defensive=True)]).status == "REDUCING"


def test_apply_when_defensive_with_cap_then_cap_holds_until_defensive_off():
    entry = apply(TradingState(strategy="s"), Defensive(on=True, max_order_fraction=0.02, issued_by="risk"), 1)
    assert combine("s", [entry]).max_order_fraction == 0.02
    assert combine("s", [entry]).status == "REDUCING"
    entry = apply(entry, Defensive(on=False, issued_by="risk"), 2)
    assert (combine("s", [entry]).max_order_fraction, combine("s", [entry]).status) == (1.0, "ACTIVE")


def test_put_when_entry_undecodable_then_halted_with_reason_returned_for_the_dead_letter() -> None:
    controls = ControlEntries()

    reason = controls.put("alpha.operator", b"{not json")

    assert reason is not None and "alpha.operator" in reason
    state = controls.effective("alpha")
    assert state.status == "HALTED"
    assert state.reason == reason


def test_put_when_corrupt_value_replaces_a_valid_entry_then_halted_not_the_previous_entry() -> None:
    controls = ControlEntries()
    assert controls.put("alpha.risk", encode(TradingState(strategy="alpha", size_multiplier=0.5))) is None

    controls.put("alpha.risk", b'{"strategy": "alpha", "status": "PAUSED"}')

    assert controls.effective("alpha").status == "HALTED"


def test_delete_when_entry_deleted_then_restriction_lifted_for_that_strategy_only() -> None:
    controls = ControlEntries()
    controls.put("alpha.operator", encode(TradingState(strategy="alpha", status="HALTED", reason="x")))
    controls.put("beta.operator", encode(TradingState(strategy="beta", status="HALTED", reason="y")))

    controls.delete("alpha.operator")

    assert controls.effective("alpha").status == "ACTIVE"
    assert controls.effective("beta").status == "HALTED"
    assert controls.strategies() == {"beta"}


def test_effective_state_when_all_entry_halts_then_every_strategy_halted_and_own_reason_first() -> None:
    entries = {
        subjects.control_key(subjects.ALL_STRATEGIES, "operator"): TradingState(strategy="ALL", status="HALTED",
                                                                               reason="fleet halt"),
        subjects.control_key("alpha", "risk"): TradingState(strategy="alpha", status="HALTED", reason="drawdown"),
        subjects.control_key("alpha", "deployer"): TradingState(strategy="alpha", allocation=0.1),
    }

    alpha = effective_state("alpha", entries)

    assert (alpha.status, alpha.reason, alpha.allocation) == ("HALTED", "drawdown", 0.1)
    assert effective_state("beta", entries).reason == "fleet halt"
    assert effective_state(subjects.ALL_STRATEGIES, entries).allocation == 1.0  # ALL sees only its own entries


def test_effective_state_when_entries_arrive_in_another_order_then_same_state() -> None:
    entries = {
        "alpha.risk": TradingState(strategy="alpha", status="HALTED", reason="risk", ts_event=5),
        "alpha.operator": TradingState(strategy="alpha", status="HALTED", reason="operator", ts_event=5),
    }

    forward = effective_state("alpha", entries)
    backward = effective_state("alpha", dict(reversed(list(entries.items()))))

    assert forward == backward
    assert forward.reason == "operator"  # sources combine in SOURCES order: the operator's reason shows


def test_grows_exposure_when_flat_or_same_side_then_true_and_other_side_false() -> None:
    assert grows_exposure(1.0, 0.0) and grows_exposure(-1.0, 0.0)
    assert grows_exposure(5.0, 10.0) and grows_exposure(-5.0, -10.0)
    assert not grows_exposure(-5.0, 10.0) and not grows_exposure(5.0, -10.0)
    assert not grows_exposure(-50.0, 10.0)  # flips: the gate trims it to the position


def test_apply_when_kill_then_halted_with_its_id_and_a_resume_or_plain_halt_clears_it() -> None:
    entry = TradingState(strategy="s", issued_by="operator")

    killed = apply(entry, Kill(command_id="k1", flatten=True), 10)
    halted_again = apply(killed, Halt(reason="plain", command_id="h2"), 11)
    resumed = apply(killed, Resume(command_id="r3"), 12)

    assert (killed.status, killed.kill_id, killed.flatten, killed.reason) == ("HALTED", "k1", True, "kill switch")
    assert (halted_again.status, halted_again.kill_id, halted_again.flatten) == ("HALTED", "", False)
    assert (resumed.status, resumed.kill_id, resumed.flatten) == ("ACTIVE", "", False)


def test_combine_when_two_sources_killed_then_the_latest_kill_in_force_and_any_flatten_flattens() -> None:
    operator = TradingState(strategy="s", status="HALTED", kill_id="k-old", flatten=True, ts_event=5)
    risk = TradingState(strategy="s", status="HALTED", kill_id="k-new", flatten=False, ts_event=9)
    deployer = TradingState(strategy="s", status="ACTIVE", ts_event=20)

    forward, backward = combine("s", [operator, risk, deployer]), combine("s", [deployer, risk, operator])

    assert (forward.kill_id, forward.flatten, forward.status) == ("k-new", True, "HALTED")
    assert (backward.kill_id, backward.flatten) == ("k-new", True)
    assert combine("s", [deployer]).kill_id == ""


def test_combine_when_a_halt_carries_its_trace_then_the_effective_state_names_that_trace_not_a_later_change() -> None:
    halt_trace = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    size_trace = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"
    risk = apply(TradingState(strategy="s", issued_by="risk"), Halt(reason="drawdown", issued_by="risk"), 1,
                 halt_trace)
    operator = apply(TradingState(strategy="s", issued_by="operator"),
                     Defensive(on=True, max_order_fraction=0.5, issued_by="operator"), 2, size_trace)
    assert risk.traceparent == halt_trace
    effective = combine("s", [risk, operator])
    assert effective.status == "HALTED"
    assert effective.traceparent == halt_trace  # the trace of what made it HALTED, though the cap came later
    assert combine("s", [operator]).traceparent == size_trace  # REDUCING: the defensive command's trace

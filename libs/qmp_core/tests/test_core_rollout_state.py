"""Reading a rollout: its phase name and what its soak still needs, for the deployer and the CLI alike."""

from qmp_core.clock import NS_PER_SECOND
from qmp_core.messages import NO_PHASE, RolloutPhase, RolloutState
from qmp_core.rollout_state import is_active, phase_name, soak_remaining

PHASES = [RolloutPhase(name="paper", env="paper", allocation=0.0, min_soak_s=100.0, min_fills=3),
          RolloutPhase(name="live10", env="live", allocation=0.1, min_soak_s=50.0, min_notional_hours=10.0)]


def rollout(**fields: object) -> RolloutState:
    return RolloutState(strategy="s", rollout_id="r", plan="p", phases=PHASES, **fields)  # type: ignore[arg-type]


def test_phase_name_when_active_then_current_phase_and_otherwise_none() -> None:
    assert phase_name(rollout(phase_index=1)) == "live10"
    assert phase_name(rollout(status="ABORTED")) == NO_PHASE
    assert phase_name(rollout(phase_index=-1)) == NO_PHASE
    assert phase_name(None) == NO_PHASE
    assert not is_active(rollout(phase_index=2))  # past the last phase: nothing to index


def test_soak_remaining_when_partly_soaked_then_what_is_left_and_never_negative() -> None:
    assert soak_remaining(rollout(soak_elapsed_ns=40 * NS_PER_SECOND, fills=1)) == (60.0, 2, 0.0)
    assert soak_remaining(rollout(phase_index=1, soak_elapsed_ns=99 * NS_PER_SECOND, notional_hours=4.0)) == (
        0.0, 0, 6.0)
    assert soak_remaining(rollout(phase_index=-1)) == (0.0, 0, 0.0)

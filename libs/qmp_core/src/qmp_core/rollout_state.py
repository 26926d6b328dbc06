"""Reading a rollout's state: its current phase and what its soak still needs. One home for the deployer
(which moves the rollout) and the CLI (which shows it and pins `expected_phase` on a command), and of the
capital a rollout holds of its account."""

from qmp_core.clock import NS_PER_SECOND
from qmp_core.messages import NO_PHASE, Env, RolloutState


def is_active(state: RolloutState | None) -> bool:
    """Return True when the rollout has a current phase (started and not aborted)."""
    return state is not None and state.status != "ABORTED" and 0 <= state.phase_index < len(state.phases)


def phase_name(state: RolloutState | None) -> str:
    """Return the current phase's name, or `none` without an active phase."""
    if state is None or not is_active(state):
        return NO_PHASE
    return state.phases[state.phase_index].name


def phase_env(state: RolloutState | None) -> Env:
    """Return the environment the strategy trades in now: its current phase's; paper without an active phase
    (no rollout, rolled back below the first phase, aborted: no live capital anywhere)."""
    if state is None or not is_active(state):
        return "paper"
    return state.phases[state.phase_index].env


def soak_remaining(state: RolloutState) -> tuple[float, int, float]:
    """Return (seconds, fills, notional-hours) still to go in the current phase; zeros when done."""
    if not 0 <= state.phase_index < len(state.phases):
        return 0.0, 0, 0.0
    phase = state.phases[state.phase_index]
    seconds = max(0.0, phase.min_soak_s - state.soak_elapsed_ns / NS_PER_SECOND)
    return seconds, max(0, phase.min_fills - state.fills), max(0.0, phase.min_notional_hours - state.notional_hours)


def capital_held(state: RolloutState, allocation: float | None = None, phase_index: int | None = None) -> float:
    """The capital of its account a rollout holds: budget × allocation while its phase is live, none in paper,
    below the first phase, aborted or without an account; at its allocation and phase now, or the ones given."""
    index = state.phase_index if phase_index is None else phase_index
    if not state.account or not 0 <= index < len(state.phases) or state.status == "ABORTED":
        return 0.0
    if state.phases[index].env != "live":
        return 0.0
    return state.budget * (state.allocation if allocation is None else allocation)

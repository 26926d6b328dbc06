"""Pre-trade limits: decide what a `SetLimits` request does to a strategy's entry; no I/O.

A request states all of the strategy's limits (the file `qmp limits apply` reads holds them all): the entry
becomes exactly what it gives, and a request that gives none removes the entry (the strategy trades under
`ALL`'s limits and the settings). Only operators set limits: the services' own users are refused here even
if the server's permissions were to let one through.
"""

from dataclasses import dataclass

from qmp_core import subjects
from qmp_core.limits import changed_limits, normalized
from qmp_core.messages import LimitsChanged, LimitsEntry, PreTradeLimits, SetLimits

SERVICE_USERS = frozenset({"collector", "risk", "execution", "deployer"})


@dataclass(frozen=True)
class LimitsDecision:
    accepted: bool
    reason: str = ""
    entry: LimitsEntry | None = None  # the strategy's entry after the request (None: it has none)
    changed: tuple[str, ...] = ()  # the limits whose value changed: nothing to write when empty
    record: LimitsChanged | None = None  # the audit record of the change


def decide_limits(strategy: str, sender: str, request: SetLimits, current: LimitsEntry | None,
                  ts_event: int) -> LimitsDecision:
    """Return the strategy's entry after `request` from `sender`, or a refusal."""
    if sender in SERVICE_USERS:
        return LimitsDecision(False, f"pre-trade limits are set by an operator, not by {sender!r}")
    try:
        subjects.check_token(strategy, "strategy")
    except ValueError as error:
        return LimitsDecision(False, str(error))
    before = current.limits if current is not None else PreTradeLimits()
    after = normalized(request.limits)
    changed = changed_limits(before, after)
    if not changed:
        return LimitsDecision(True, "the limits are already so", current)
    entry = None
    if after != PreTradeLimits():
        entry = LimitsEntry(strategy=strategy, limits=after, sender=sender, command_id=request.command_id,
                            reason=request.reason, ts_event=ts_event)
    record = LimitsChanged(strategy=strategy, before=before, after=after, changed=list(changed), sender=sender,
                           command_id=request.command_id, reason=request.reason, ts_event=ts_event)
    return LimitsDecision(True, "", entry, changed, record)

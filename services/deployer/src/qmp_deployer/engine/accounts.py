"""Accounts and their capital: what a `SetAccount` request does, and how much capital rollouts hold; no I/O.

A strategy trades from one account (named when it is deployed) with a budget within it. While a rollout's
phase is live, it holds `budget × allocation` of its account's capital; paper phases, a rollout rolled back
below its first phase and an aborted one hold none. The sum of what an account's rollouts hold never exceeds
its capital: a deploy or a promotion that would make it do so is refused with the figures, and so is lowering
an account's capital below what its rollouts hold, or removing an account a rollout trades from. Allocations
only go down otherwise (rollbacks, gate actions), so the sum can only go up through the checks below.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from qmp_core import subjects
from qmp_core.messages import Account, AccountChanged, RolloutState, SetAccount
from qmp_core.rollout_state import capital_held
from qmp_deployer.engine.limits import SERVICE_USERS

# Capital is money: a sum within a cent of the capital fits (float sums of budget × allocation are not exact).
TOLERANCE = 0.01


def held_by_others(rollouts: Mapping[str, RolloutState], account: str, strategy: str) -> float:
    """The capital of `account` held by the rollouts of strategies other than `strategy`."""
    return sum(capital_held(state) for name, state in rollouts.items() if name != strategy and state.account == account)


def trading_from(rollouts: Mapping[str, RolloutState], account: str) -> list[str]:
    """The strategies whose rollouts name `account` and are not aborted."""
    return sorted(name for name, state in rollouts.items() if state.account == account and state.status != "ABORTED")


def capital_blocker(state: RolloutState, phase_index: int, allocation: float,
                    accounts: Mapping[str, Account], rollouts: Mapping[str, RolloutState]) -> str:
    """Why `state` may not trade at `allocation` in phase `phase_index` (its account's capital), or ''."""
    if not state.account:
        return ""
    account = accounts.get(state.account)
    if account is None:
        return f"account {state.account!r} does not exist: `qmp accounts add {state.account} --capital ...`"
    wanted = capital_held(state, allocation, phase_index)
    others = held_by_others(rollouts, state.account, state.strategy)
    if others + wanted > account.capital + TOLERANCE:
        return (f"capital: account {account.account} would hold {others + wanted:,.2f} {account.currency} of live "
                f"allocations, over its capital of {account.capital:,.2f} ({others:,.2f} held by its other "
                f"strategies, {wanted:,.2f} asked by {state.strategy})")
    return ""


def budget_for(account: Account | None, account_id: str, budget: float | None) -> tuple[float, str]:
    """The budget a deploy gives its strategy within `account` (its whole capital unless given), or a refusal."""
    if account is None:
        return 0.0, f"account {account_id!r} does not exist: `qmp accounts add {account_id} --capital ...` first"
    if budget is None:
        return account.capital, ""
    if budget > account.capital + TOLERANCE:
        return 0.0, (f"budget {budget:,.2f} is over account {account_id}'s capital of "
                     f"{account.capital:,.2f} {account.currency}")
    return budget, ""


@dataclass(frozen=True)
class AccountDecision:
    accepted: bool
    reason: str = ""
    account: Account | None = None  # the account after the request (None: there is none)
    record: AccountChanged | None = None  # the audit record of the change (None: nothing to write)


def decide_account(account_id: str, sender: str, request: SetAccount, current: Account | None,
                   rollouts: Mapping[str, RolloutState], ts_event: int) -> AccountDecision:
    """Return the account after `request` from `sender`, or a refusal with the reason."""
    if sender in SERVICE_USERS:
        return AccountDecision(False, f"accounts are set by an operator, not by {sender!r}", current)
    try:
        subjects.check_token(account_id, "account")
    except ValueError as error:
        return AccountDecision(False, str(error), current)
    users = trading_from(rollouts, account_id)
    if request.remove:
        if current is None:
            return AccountDecision(True, f"no account {account_id!r}: nothing to remove")
        if users:
            return AccountDecision(False, f"account {account_id} is traded from by {', '.join(users)}: abort their "
                                          "rollouts first", current)
        return AccountDecision(True, "", None, _record(account_id, current, None, sender, request, ts_event))
    if request.capital is None:
        return AccountDecision(False, "capital is required (or remove)", current)
    held = sum(capital_held(rollouts[name]) for name in users)
    if request.capital + TOLERANCE < held:
        return AccountDecision(False, f"capital {request.capital:,.2f} is below the {held:,.2f} that live "
                                      f"allocations of {', '.join(users)} hold: lower those first", current)
    if current is not None and users and request.venue != current.venue:
        return AccountDecision(False, f"account {account_id} is traded from by {', '.join(users)}: its venue "
                                      "cannot change under them", current)
    after = Account(account=account_id, venue=request.venue, currency=request.currency, capital=request.capital,
                    sender=sender, command_id=request.command_id, reason=request.reason, ts_event=ts_event)
    if current is not None and _same(current, after):
        return AccountDecision(True, "the account is already so", current)
    return AccountDecision(True, "", after, _record(account_id, current, after, sender, request, ts_event))


def _same(a: Account, b: Account) -> bool:
    return (a.venue, a.currency, a.capital) == (b.venue, b.currency, b.capital)


def _record(account_id: str, before: Account | None, after: Account | None, sender: str, request: SetAccount,
            ts_event: int) -> AccountChanged:
    return AccountChanged(account=account_id, before=before, after=after, sender=sender,
                          command_id=request.command_id, reason=request.reason, ts_event=ts_event)

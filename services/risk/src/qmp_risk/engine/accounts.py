"""Accounts' risk: the equity of an account from its strategies' books, its drawdown and its Expected Shortfall.

A strategy trades from one account (its rollout names it); the account's equity is its capital plus the
profit and loss of every member's book since it joined (each book's equity less its first one seen), marked
at each member's latest snapshot. Values are kept per event time: the account's value at a timestamp is
final once a later timestamp arrives, and only final values make its returns (one per timestamp) and the
peaks of its trailing drawdown window, so a replay gives the same numbers whichever member reports first.
Expected Shortfall is historical simulation over the last `var_window` of those returns. Synchronous, no I/O.
"""

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from qmp_kernels.var import historical_var_es_levels_nb


@dataclass(frozen=True)
class AccountReading:
    """An account's measures after one member's snapshot."""

    account: str
    equity: float
    drawdown_24h: float  # from the best final value in the trailing window (or the current one if higher)
    es: float | None  # ES of the account's returns at the level, a share of equity; None until enough returns
    observations: int
    members: tuple[str, ...]


@dataclass
class _Account:
    capital: float = 0.0  # 0: unknown, the members' first equities stand in
    current_ts: int = 0
    current: float = math.nan  # the value at current_ts so far
    final: float = math.nan  # the value at the previous timestamp (final)
    returns: deque[float] = field(default_factory=deque)
    peaks: deque[tuple[int, float]] = field(default_factory=deque)  # final values, decreasing: front is the peak


class AccountBook:
    """Every account's measures, fed with the members' equities in event time."""

    def __init__(self, window_ns: int, var_window: int, min_observations: int, level: float) -> None:
        self.window_ns = window_ns
        self.var_window = var_window
        self.min_observations = min_observations
        self.levels = np.array([level], dtype=np.float64)
        self.members: dict[str, str] = {}  # strategy -> account
        self._accounts: dict[str, _Account] = {}
        self._first: dict[str, float] = {}  # strategy -> its book's equity when it joined
        self._latest: dict[str, float] = {}

    def follow(self, strategy: str, account: str) -> None:
        """Record which account a strategy trades from ("": none). A new member's P&L counts from now on."""
        if self.members.get(strategy, "") == account:
            return
        self._first.pop(strategy, None)
        self._latest.pop(strategy, None)
        if account:
            self.members[strategy] = account
            self._accounts.setdefault(account, _Account(returns=deque(maxlen=self.var_window)))
        else:
            self.members.pop(strategy, None)

    def set_capital(self, account: str, capital: float) -> None:
        self._accounts.setdefault(account, _Account(returns=deque(maxlen=self.var_window))).capital = capital

    def members_of(self, account: str) -> tuple[str, ...]:
        return tuple(sorted(name for name, of in self.members.items() if of == account))

    def on_equity(self, strategy: str, ts: int, equity: float) -> AccountReading | None:
        """Take a member's equity at `ts`; return its account's measures (None if it trades from none)."""
        account_id = self.members.get(strategy)
        if account_id is None:
            return None
        account = self._accounts[account_id]
        self._first.setdefault(strategy, equity)
        self._latest[strategy] = equity
        if ts > account.current_ts:
            if math.isfinite(account.current):  # the previous timestamp's value is final now
                if math.isfinite(account.final) and account.final > 0.0:
                    account.returns.append(account.current / account.final - 1.0)
                account.final = account.current
                self._add_peak(account, account.current_ts, account.current)
            account.current_ts = ts
        members = self.members_of(account_id)
        base = account.capital if account.capital > 0.0 else sum(self._first[m] for m in members if m in self._first)
        account.current = base + sum(self._latest[m] - self._first[m] for m in members if m in self._latest)
        while account.peaks and account.peaks[0][0] < ts - self.window_ns:
            account.peaks.popleft()
        peak = max(account.peaks[0][1] if account.peaks else -math.inf, account.current)
        drawdown = 1.0 - account.current / peak if peak > 0.0 else 1.0
        es = None
        if len(account.returns) >= self.min_observations:
            _, shortfall, _status = historical_var_es_levels_nb(np.fromiter(account.returns, dtype=np.float64),
                                                                self.levels)
            es = float(shortfall[0]) if math.isfinite(shortfall[0]) else None
        return AccountReading(account_id, account.current, max(0.0, drawdown), es, len(account.returns), members)

    @staticmethod
    def _add_peak(account: _Account, ts: int, value: float) -> None:
        peaks = account.peaks
        while peaks and peaks[-1][1] <= value:
            peaks.pop()
        peaks.append((ts, value))

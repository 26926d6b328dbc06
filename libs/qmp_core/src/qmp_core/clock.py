"""Clocks in int nanoseconds. No service reads the wall clock directly: it is given one of these."""

import time
from typing import Protocol

NS_PER_SECOND = 1_000_000_000
NS_PER_HOUR = 3600 * NS_PER_SECOND
NS_PER_DAY = 24 * NS_PER_HOUR


class Clock(Protocol):
    def now_ns(self) -> int: ...


class LiveClock:
    """Wall time."""

    def now_ns(self) -> int:
        return time.time_ns()


class ReplayClock:
    """Event time: the latest `ts_event` seen; never moves backwards."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def observe(self, ts_event: int) -> None:
        if ts_event > self._now:
            self._now = ts_event

    def now_ns(self) -> int:
        return self._now


class TestClock:
    """Set and advanced by hand in tests."""

    __test__ = False

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def set(self, ns: int) -> None:
        self._now = ns

    def advance(self, ns: int) -> None:
        self._now += ns

    def now_ns(self) -> int:
        return self._now


def make_clock(mode: str) -> LiveClock | ReplayClock:
    """Return the clock for a service's mode: `live` or `replay`."""
    if mode == "live":
        return LiveClock()
    if mode == "replay":
        return ReplayClock()
    raise ValueError(f"clock mode must be 'live' or 'replay', got {mode!r}")

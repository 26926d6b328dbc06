"""Clocks in int nanoseconds. No service reads the wall clock directly: it is given one of these."""

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

NS_PER_SECOND = 1_000_000_000
NS_PER_HOUR = 3600 * NS_PER_SECOND
NS_PER_DAY = 24 * NS_PER_HOUR
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_datetime(ts_ns: int) -> datetime:
    """Return the UTC datetime of an int-nanosecond timestamp, exact to the microsecond (no float rounding)."""
    return _EPOCH + timedelta(microseconds=ts_ns // 1_000)


def to_ns(moment: datetime) -> int:
    """Return the int nanoseconds of a datetime (UTC when it names no zone), exact to the microsecond."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * NS_PER_SECOND + moment.microsecond * 1_000


def parse_ns(text: str) -> int:
    """Return the int nanoseconds of an ISO 8601 date or time (`2008-09-01`, `...T21:00:00Z`; UTC when it names
    no zone)."""
    return to_ns(datetime.fromisoformat(text.replace("Z", "+00:00")))


def iso_date(ts_ns: int) -> str:
    """Return the UTC day of an int-nanosecond timestamp as YYYY-MM-DD."""
    return to_datetime(ts_ns).strftime("%Y-%m-%d")


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

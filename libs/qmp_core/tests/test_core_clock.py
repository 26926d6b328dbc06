"""Clocks and time conversion in int nanoseconds."""

from datetime import UTC, datetime

from qmp_core.clock import NS_PER_DAY, ReplayClock, iso_date, to_datetime


def test_replay_clock_when_older_event_then_never_moves_backwards():
    clock = ReplayClock()
    clock.observe(100)
    clock.observe(50)
    assert clock.now_ns() == 100


def test_to_datetime_when_nanoseconds_given_then_exact_utc_microseconds_without_float_rounding():
    ts = 1_700_000_000_123_456_789  # a float division would round the microseconds

    assert to_datetime(ts) == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    assert to_datetime(-1_000) == datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_iso_date_when_last_nanosecond_of_a_day_then_that_day():
    assert iso_date(NS_PER_DAY - 1) == "1970-01-01"
    assert iso_date(NS_PER_DAY) == "1970-01-02"


def test_parse_ns_when_iso_text_then_exact_int_ns_utc_unless_a_zone_is_named() -> None:
    from qmp_core.clock import parse_ns, to_ns

    assert parse_ns("2008-09-09T21:00:00Z") == 1_220_994_000 * 10**9
    assert parse_ns("2008-09-09T21:00:00") == parse_ns("2008-09-09T23:00:00+02:00") == 1_220_994_000 * 10**9
    assert parse_ns("2008-09-09") == 1_220_918_400 * 10**9
    assert parse_ns("2008-09-09T21:00:00.000123Z") == 1_220_994_000 * 10**9 + 123_000
    assert to_ns(to_datetime(1_220_994_000_123_456_000)) == 1_220_994_000_123_456_000

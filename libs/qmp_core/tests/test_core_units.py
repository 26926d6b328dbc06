"""Unit tests of the core: config loading, clocks, trading-state combination, bar validation."""

import math

import msgspec
import pytest

from qmp_core.clock import ReplayClock
from qmp_core.config import ServiceSettings, load_settings
from qmp_core.messages import BarBatch, ControlCommand, Halt, TradingState, codec
from qmp_core.trading_state import combine
from qmp_core.validation import BatchRejected, validate_batch


def batch(ts: int = 10, close: list[float] | None = None, **columns: list[float]) -> BarBatch:
    close = close or [10.0, 20.0]
    n = len(close)
    values = {"open": close, "high": [c * 1.01 for c in close], "low": [c * 0.99 for c in close],
              "volume": [100.0] * n}
    values.update(columns)
    return BarBatch(venue="v", ts_event=ts, symbols=[f"S{i}" for i in range(n)], close=close, **values)


def test_load_settings_when_env_has_values_then_typed_and_unknown_ignored():
    settings = load_settings(ServiceSettings, {"QMP_NATS_URL": "nats://x:1", "QMP_OTHER": "1"})
    assert settings.nats_url == "nats://x:1"


def test_load_settings_when_value_has_wrong_type_then_fails_fast_with_field_name():
    class Typed(msgspec.Struct, frozen=True, kw_only=True):
        window: int = 250

    with pytest.raises(ValueError, match="window"):
        load_settings(Typed, {"QMP_WINDOW": "many"})


def test_replay_clock_when_older_event_then_never_moves_backwards():
    clock = ReplayClock()
    clock.observe(100)
    clock.observe(50)
    assert clock.now_ns() == 100


def test_combine_when_one_source_halts_then_halted_and_tightest_limits_win():
    entries = [
        TradingState(strategy="s", allocation=0.5, size_multiplier=1.0),
        TradingState(strategy="s", status="HALTED", reason="dd", allocation=1.0, size_multiplier=0.5),
    ]
    state = combine("s", entries)
    assert (state.status, state.reason, state.allocation, state.size_multiplier) == ("HALTED", "dd", 0.5, 0.5)


def test_combine_when_defensive_then_reducing():
    assert combine("s", [TradingState(strategy="s", defensive=True)]).status == "REDUCING"


def test_control_codec_when_unknown_field_then_rejected():
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        codec(ControlCommand).decode(b'{"command":"halt","reason":"x","force":true}')
    assert isinstance(codec(ControlCommand).decode(b'{"command":"halt","reason":"x"}'), Halt)


def test_validate_batch_when_rows_are_bad_then_each_rejected_with_reason_and_rest_kept():
    bad = batch(close=[10.0, -1.0, 30.0, 40.0, math.nan], volume=[1.0, 1.0, -5.0, 1.0, 1.0],
                high=[10.1, 1.0, 30.3, 39.0, 1.0])
    result = validate_batch(bad)
    reasons = dict(result.rejected)
    assert result.symbols == ["S0"]
    assert "non-positive" in reasons["S1"]
    assert "volume" in reasons["S2"]
    assert "outside" in reasons["S3"] or "high below low" in reasons["S3"]
    assert "non-finite" in reasons["S4"]


def test_validate_batch_when_timestamp_not_after_last_then_whole_batch_rejected():
    with pytest.raises(BatchRejected, match="out-of-order"):
        validate_batch(batch(ts=5), last_ts_event=10)
    with pytest.raises(BatchRejected, match="duplicate"):
        validate_batch(batch(ts=10), last_ts_event=10)


def test_validate_batch_when_columns_differ_in_length_then_rejected():
    with pytest.raises(BatchRejected, match="lengths"):
        validate_batch(BarBatch(venue="v", ts_event=1, symbols=["A"], open=[1.0], high=[1.0], low=[1.0],
                                close=[1.0, 2.0], volume=[1.0]))


def test_apply_when_defensive_with_cap_then_cap_holds_until_defensive_off():
    from qmp_core.messages import Defensive
    from qmp_core.trading_state import apply

    entry = apply(TradingState(strategy="s"), Defensive(on=True, max_order_fraction=0.02, issued_by="risk"), 1)
    assert combine("s", [entry]).max_order_fraction == 0.02
    assert combine("s", [entry]).status == "REDUCING"
    entry = apply(entry, Defensive(on=False, issued_by="risk"), 2)
    assert (combine("s", [entry]).max_order_fraction, combine("s", [entry]).status) == (1.0, "ACTIVE")

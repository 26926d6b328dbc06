"""Bar validation: bad rows dead-lettered with their reason, the rest kept; bad batches rejected whole."""

import math

import msgspec
import pytest

from qmp_core.messages import BarBatch
from qmp_core.validation import BatchRejected, validate_batch


def batch(ts: int = 10, close: list[float] | None = None, **columns: list[float]) -> BarBatch:
    close = close or [10.0, 20.0]
    n = len(close)
    values = {"open": close, "high": [c * 1.01 for c in close], "low": [c * 0.99 for c in close],
              "volume": [100.0] * n}
    values.update(columns)
    return BarBatch(venue="v", ts_event=ts, symbols=[f"S{i}" for i in range(n)], close=close, **values)


def test_validate_batch_when_rows_are_bad_then_each_rejected_with_reason_and_rest_kept():
    bad = batch(close=[10.0, -1.0, 30.0, 40.0, math.nan], volume=[1.0, 1.0, -5.0, 1.0, 1.0],
                high=[10.1, 1.0, 30.3, 39.0, 1.0])
    result = validate_batch(bad)
    reasons = dict(result.rejected)
    assert result.symbols == ["S0"]
    assert "price below" in reasons["S1"]
    assert "volume" in reasons["S2"]
    assert "outside" in reasons["S3"] or "high below low" in reasons["S3"]
    assert "non-finite" in reasons["S4"]


def test_validate_batch_when_after_the_latest_allowed_then_whole_batch_rejected():
    assert validate_batch(batch(ts=10), latest_ts_event=10).symbols
    with pytest.raises(BatchRejected, match="from the future"):
        validate_batch(batch(ts=11), latest_ts_event=10)


def test_decode_when_field_beyond_its_bound_then_decode_error_names_it():
    from qmp_core.messages import MAX_SYMBOLS_PER_BATCH, Halt, codec

    with pytest.raises(msgspec.ValidationError, match="command_id"):
        codec(Halt).decode(msgspec.json.encode({"command": "halt", "command_id": "x" * 129}))
    with pytest.raises(msgspec.ValidationError, match="reason"):
        codec(Halt).decode(msgspec.json.encode({"command": "halt", "reason": "x" * 1_001}))
    n = MAX_SYMBOLS_PER_BATCH + 1
    wide = {"venue": "v", "ts_event": 1, "symbols": [f"S{i}" for i in range(n)], **{c: [1.0] * n for c in
            ("open", "high", "low", "close", "volume")}}
    with pytest.raises(msgspec.ValidationError, match="symbols"):
        codec(BarBatch).decode(msgspec.json.encode(wide))


def test_validate_batch_when_timestamp_not_after_last_then_whole_batch_rejected():
    with pytest.raises(BatchRejected, match="out-of-order"):
        validate_batch(batch(ts=5), last_ts_event=10)
    with pytest.raises(BatchRejected, match="duplicate"):
        validate_batch(batch(ts=10), last_ts_event=10)


def test_validate_batch_when_columns_differ_in_length_then_rejected():
    with pytest.raises(BatchRejected, match="lengths"):
        validate_batch(BarBatch(venue="v", ts_event=1, symbols=["A"], open=[1.0], high=[1.0], low=[1.0],
                                close=[1.0, 2.0], volume=[1.0]))

"""Messages: decoding is strict, so an unknown field or command is rejected, never half-applied; bars have a
binary form that decodes to the same batch under the same rules."""

import json
import math

import msgspec
import pytest

from qmp_core.messages import (
    CONTENT_TYPE_BARS,
    CONTENT_TYPE_JSON,
    BarBatch,
    ControlCommand,
    DeploymentEvent,
    Halt,
    ReduceOrderSize,
    RolloutState,
    TradingState,
    codec,
    encode,
    wire,
)


def test_control_codec_when_unknown_field_then_rejected():
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        codec(ControlCommand).decode(b'{"command":"halt","reason":"x","force":true}')
    assert isinstance(codec(ControlCommand).decode(b'{"command":"halt","reason":"x"}'), Halt)


def test_reduce_order_size_when_sent_by_either_name_then_one_size_multiplier_and_both_names_written() -> None:
    decoder = codec(ControlCommand)

    new = decoder.decode(b'{"command": "reduce_order_size", "size_multiplier": 0.5}')
    old = decoder.decode(b'{"command": "reduce_order_size", "factor": 0.5}')

    assert isinstance(new, ReduceOrderSize) and new.size_multiplier == 0.5 and new == old
    assert json.loads(encode(old))["size_multiplier"] == 0.5 and json.loads(encode(new))["factor"] == 0.5


def test_reduce_order_size_when_names_disagree_or_missing_then_rejected_with_the_reason() -> None:
    with pytest.raises(msgspec.ValidationError, match="disagree"):
        codec(ControlCommand).decode(b'{"command": "reduce_order_size", "size_multiplier": 0.5, "factor": 0.4}')
    with pytest.raises(msgspec.ValidationError, match="needs size_multiplier"):
        codec(ControlCommand).decode(b'{"command": "reduce_order_size"}')


def test_rollout_state_when_stored_then_size_multiplier_keeps_its_stored_name() -> None:
    state = RolloutState(strategy="s", rollout_id="r", plan="p", phases=[], size_multiplier=0.5)

    stored = json.loads(encode(state))

    assert stored["size_factor"] == 0.5 and "size_multiplier" not in stored
    assert codec(RolloutState).decode(encode(state)).size_multiplier == 0.5


def test_trading_state_when_read_by_its_first_name_then_issued_by_and_both_names_written() -> None:
    old = codec(TradingState).decode(b'{"strategy": "s", "status": "HALTED", "updated_by": "risk"}')

    assert old.issued_by == "risk"
    assert json.loads(encode(TradingState(strategy="s", issued_by="operator")))["updated_by"] == "operator"
    assert msgspec.structs.replace(old, issued_by="deployer").updated_by == "deployer"


def test_deployment_event_when_read_by_its_first_name_then_issued_by_and_both_names_written() -> None:
    old = codec(DeploymentEvent).decode(b'{"strategy": "s", "rollout_id": "r", "seq": 1, "kind": "alert", '
                                        b'"actor": "verify", "ts_event": 1}')

    assert old.issued_by == "verify"
    written = json.loads(encode(DeploymentEvent(strategy="s", rollout_id="r", seq=1, kind="x", issued_by="operator",
                                                ts_event=1)))
    assert written["actor"] == written["issued_by"] == "operator"


BARS = BarBatch(venue="v1", ts_event=1_700_000_000_000_000_000, symbols=["AAPL", "BRK.B", "é-ü"],
                open=[1.0, 2.5, 0.1], high=[1.5, 3.0, 0.30000000000000004], low=[0.5, 2.0, 1e-9],
                close=[1.25, 2.75, 0.2], volume=[0.0, 1e15, 12.0], seq=3, chunk=1, chunks=2, ts_init=7)


def test_bars_when_sent_binary_then_same_batch_in_fewer_bytes_with_or_without_the_header() -> None:
    payload, content_type = wire(BARS)
    assert content_type == CONTENT_TYPE_BARS and payload[:1] == b"\x9d"
    bars = codec(BarBatch)
    assert bars.decode(payload, CONTENT_TYPE_BARS) == BARS
    assert bars.decode(payload) == BARS  # a reader that ignores headers tells it by the first byte
    assert bars.decode(encode(BARS)) == BARS  # JSON, no header: as before
    closes = [100.0 * math.exp(math.sin(i) / 10) for i in range(1000)]  # full precision, as markets are
    big = BarBatch(venue="v", ts_event=1, symbols=[f"S{i:04d}" for i in range(1000)], open=closes, high=closes,
                   low=closes, close=closes, volume=[c * 1e4 for c in closes])
    assert len(wire(big)[0]) < 0.5 * len(encode(big))
    assert bars.decode(wire(big)[0]) == big
    assert wire(Halt())[1] == CONTENT_TYPE_JSON


def _binary(**changes: object) -> bytes:
    fields = [BARS.venue, BARS.ts_event, BARS.symbols] + [bytes(8 * len(BARS.symbols))] * 5 + [0, 0, 1, 0, 1]
    names = ["venue", "ts_event", "symbols", "open", "high", "low", "close", "volume"]
    for name, value in changes.items():
        fields[names.index(name)] = value
    return msgspec.msgpack.encode(fields)


@pytest.mark.parametrize(("changes", "why"), [
    ({"symbols": ["OK", "BAD\x00"]}, "control character"),
    ({"symbols": ["OK", "X" * 65]}, "1 to 64 characters"),
    ({"symbols": ["OK", ""]}, "1 to 64 characters"),
    ({"close": b"\x00" * 7}, "whole float64s"),
    ({"venue": "not a token!"}, "venue"),
    ({"ts_event": "soon"}, "ts_event"),
])
def test_bars_when_binary_form_breaks_a_rule_then_rejected_as_the_json_form_would_be(changes: dict, why: str) -> None:
    bars = codec(BarBatch)
    assert bars.decode(_binary()).symbols == BARS.symbols  # the unchanged message decodes
    with pytest.raises(msgspec.ValidationError, match=why):
        bars.decode(_binary(**changes), CONTENT_TYPE_BARS)


def test_codec_when_content_type_unknown_then_decode_error_names_it() -> None:
    with pytest.raises(msgspec.DecodeError, match="application/xml"):
        codec(BarBatch).decode(encode(BARS), "application/xml")
    with pytest.raises(msgspec.DecodeError, match=r"application/vnd\.qmp\.bars"):
        codec(Halt).decode(wire(BARS)[0], CONTENT_TYPE_BARS)


def test_execution_events_when_per_order_or_per_batch_then_the_same_events_and_other_subjects_none() -> None:
    from qmp_core.messages import BatchEvents, Fill, OrderAccepted, encode, execution_events

    order = OrderAccepted(strategy="s", order_id="o1", symbol="A", side="BUY", quantity=1.0, price=1.0, ts_event=1)
    fill = Fill(strategy="s", order_id="o1", fill_id="f1", symbol="A", side="BUY", quantity=1.0, price=1.0,
                arrival_price=1.0, slippage_bps=0.0, fee=0.0, ts_event=1)
    batch = encode(BatchEvents(strategy="s", ts_event=1, decisions=[order], fills=[fill]))
    assert execution_events("qmp.exec.s.batch_events", batch) == ([order], [fill])
    assert execution_events("qmp.exec.s.orders", encode(order)) == ([order], [])
    assert execution_events("qmp.exec.s.fills", encode(fill)) == ([], [fill])
    assert execution_events("qmp.exec.s.portfolio", b"{}") == ([], [])

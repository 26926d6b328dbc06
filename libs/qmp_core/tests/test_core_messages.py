"""Messages: decoding is strict, so an unknown field or command is rejected, never half-applied."""

import json

import msgspec
import pytest

from qmp_core.messages import (
    ControlCommand,
    DeploymentEvent,
    Halt,
    ReduceOrderSize,
    RolloutState,
    TradingState,
    codec,
    encode,
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

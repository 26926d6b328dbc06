"""Messages: decoding is strict, so an unknown field or command is rejected, never half-applied."""

import msgspec
import pytest

from qmp_core.messages import ControlCommand, Halt, codec


def test_control_codec_when_unknown_field_then_rejected():
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        codec(ControlCommand).decode(b'{"command":"halt","reason":"x","force":true}')
    assert isinstance(codec(ControlCommand).decode(b'{"command":"halt","reason":"x"}'), Halt)

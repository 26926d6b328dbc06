"""What the supervisor hands each service: the operator's settings, under the stack's own connection and identity."""

from pathlib import Path

import pytest

from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.runtime.supervisor import Stack, StackOptions


def stack_with(tmp_path: Path, **options: object) -> Stack:
    stack = Stack(StackOptions(home=tmp_path, **options))  # type: ignore[arg-type]
    stack.credentials = NatsCredentials(url="nats://127.0.0.1:4999", users={"execution": "pw"})
    stack.database_url = "postgresql://u@127.0.0.1:5999/qmp"
    return stack


def test_service_environment_when_operator_sets_qmp_settings_for_up_then_they_reach_the_services(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 11 #8: `qmp up` dropped every QMP_* variable, so QMP_INITIAL_CAPITAL never reached execution.
    monkeypatch.setenv("QMP_INITIAL_CAPITAL", "100000")
    monkeypatch.setenv("QMP_NATS_URL", "nats://somewhere-else:4222")  # the stack's own connection wins

    env = stack_with(tmp_path, pass_environment=True).service_environment("execution")

    assert env["QMP_INITIAL_CAPITAL"] == "100000"
    assert env["QMP_NATS_URL"] == "nats://127.0.0.1:4999"
    assert env["QMP_NATS_USER"] == "execution"


def test_service_environment_when_a_replay_of_record_then_operator_settings_do_not_change_its_numbers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QMP_INITIAL_CAPITAL", "100000")

    env = stack_with(tmp_path).service_environment("execution")  # the demo and the verification replays

    assert "QMP_INITIAL_CAPITAL" not in env

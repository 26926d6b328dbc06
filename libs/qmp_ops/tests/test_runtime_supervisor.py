"""What the supervisor hands each service: the operator's settings, under the stack's own connection and identity."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.runtime.supervisor import STACK_OWNED, Stack, StackOptions, Supervisor


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


class StartsRecorded(Stack):
    """A stack whose services are real processes that exit at once; it records each start."""

    def __init__(self, home: Path) -> None:
        super().__init__(StackOptions(home=home, services=("risk",)))
        self.starts: list[str] = []

    def start_service(self, service: str) -> None:
        self.starts.append(service)
        self.processes[service] = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        self.processes[service].wait()


def test_supervisor_when_a_service_dies_then_it_is_restarted_in_the_step_that_finds_it_and_backs_off_after(
        tmp_path: Path) -> None:
    stack = StartsRecorded(tmp_path)
    clock = [100.0]
    supervisor = Supervisor(stack, monotonic=lambda: clock[0])
    stack.start_service("risk")
    supervisor.records["risk"].started_at = 0.0  # it ran long enough to count as stable

    supervisor._on_down("risk", supervisor.records["risk"], stack.processes["risk"], clock[0])
    assert stack.starts == ["risk", "risk"]  # found down and started again in one step
    assert "3" in supervisor.records["risk"].last_exit  # the exit code, for `qmp status`

    clock[0] += 0.1  # it died again soon after: still restarted at once (a crash is not yet a loop)
    supervisor._on_down("risk", supervisor.records["risk"], stack.processes["risk"], clock[0])
    assert stack.starts == ["risk", "risk", "risk"]

    clock[0] += 0.1  # and again: now the next start waits out the backoff
    supervisor._on_down("risk", supervisor.records["risk"], stack.processes["risk"], clock[0])
    assert stack.starts == ["risk", "risk", "risk"]
    clock[0] += 0.5
    supervisor._on_down("risk", supervisor.records["risk"], stack.processes["risk"], clock[0])
    assert stack.starts == ["risk", "risk", "risk", "risk"]
    assert supervisor.records["risk"].restarts == 3


def fake_service(root: Path) -> Path:
    """A service package `qmp_sparetest` whose import and run each leave a mark in `root`."""
    package = root / "pkg" / "qmp_sparetest"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import os, pathlib, time\n"
        f"MARKS = pathlib.Path({str(root)!r})\n"
        "(MARKS / 'imported').write_text(str(time.monotonic()))\n"
        "def main():\n"
        "    (MARKS / 'ran').write_text(os.environ['QMP_NATS_USER'])\n"
    )
    return root / "pkg"


def test_warm_spare_when_started_then_imported_ahead_and_run_only_on_the_word(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(fake_service(tmp_path)))
    stack = stack_with(tmp_path / "home", services=("sparetest",))
    stack.credentials = NatsCredentials(url="nats://127.0.0.1:4999", users={"sparetest": "pw"})
    (stack.run_dir / "logs").mkdir(parents=True, exist_ok=True)

    assert stack.prepare_spare("sparetest") is True
    assert stack.prepare_spare("sparetest") is False  # one spare per service
    spare = stack.spares["sparetest"]
    deadline = time.monotonic() + 30
    while not (tmp_path / "imported").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "imported").exists() and not (tmp_path / "ran").exists()

    stack.start_service("sparetest")  # the crash's restart wakes the spare
    assert stack.processes["sparetest"] is spare and "sparetest" not in stack.spares
    assert spare.wait(30) == 0
    assert (tmp_path / "ran").read_text() == "sparetest"

    stack.prepare_spare("sparetest")
    stack.stop()  # a spare never woken is ended with the stack, without running
    assert stack.spares == {}
    assert (tmp_path / "ran").read_text() == "sparetest"


def test_service_environment_when_the_operator_sets_every_setting_then_the_stack_owned_ones_are_the_stacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # STACK_OWNED is what `qmp up --set` refuses: exactly the settings this environment always overrides.
    for name in STACK_OWNED:
        monkeypatch.setenv(f"QMP_{name.upper()}", "operator's")
    stack = stack_with(tmp_path, pass_environment=True)
    stack.metrics_ports = {"execution": 9999}

    env = stack.service_environment("execution")

    assert {name for name in STACK_OWNED if env[f"QMP_{name.upper()}"] == "operator's"} == set()

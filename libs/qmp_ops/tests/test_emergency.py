"""The emergency protocol: a failed verification of a running strategy halts it, locks it and alerts."""

import asyncio
import json
import sys
from pathlib import Path

import pytest

from qmp_core import subjects
from qmp_lab.lock import locked_strategies
from qmp_lab.verify.core import TestResult, source_hash
from qmp_lab.verify.gate import TESTS, check_deployable, record_verification
from qmp_ops import emergency
from qmp_ops.testing import operator_connection

STRATEGY_SOURCE = '''
import pandas as pd
from qmp_core.strategy import BaseStrategy


class Flat(BaseStrategy):
    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        return prices * 0.0
'''


@pytest.fixture
def strategy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique_id: str) -> tuple[str, Path]:
    name = f"emergency_strategy_{unique_id}"
    source = tmp_path / f"{name}.py"
    source.write_text(STRATEGY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:Flat", source


def record(home: Path, path: str, strategy_id: str) -> None:
    passed = [TestResult(name=name, status="pass", summary="s") for name in TESTS]
    record_verification(home, path, {}, strategy_id, passed, None, source_hash(path))


def test_emergency_halt_when_no_stack_then_lock_written_and_alert_command_gets_json(tmp_path, strategy_module):
    path, _ = strategy_module
    record(tmp_path, path, strategy_id="flat2")
    captured = tmp_path / "alert.json"
    command = f"{sys.executable} -c \"import sys; open({str(captured)!r}, 'w').write(sys.stdin.read())\""

    outcome = emergency.emergency_halt("flat2", "verification failed: black_swan", tmp_path, None,
                                       alert_command=command, alert_webhook="")

    assert outcome["halt"]["accepted"] is False
    assert locked_strategies(tmp_path)["flat2"]["reason"] == "verification failed: black_swan"
    assert json.loads(captured.read_text())["strategy"] == "flat2"
    ok, reason = check_deployable("flat2", home=tmp_path)
    assert ok is False and "trading.lock" in reason


@pytest.mark.integration
async def test_emergency_halt_when_stack_running_then_halt_request_and_alert_event_sent(
        tmp_path, nats_credentials, operator_nc, unique_id):
    connection = operator_connection(nats_credentials, run_dir=str(tmp_path))
    requests: list[dict] = []

    async def owner(msg):
        requests.append(json.loads(msg.data))
        await msg.respond(json.dumps({"accepted": True, "state": {"status": "HALTED"}}).encode())

    await operator_nc.subscribe(subjects.control(unique_id), cb=owner)
    events = await operator_nc.subscribe(subjects.deploy_events(unique_id))
    await operator_nc.flush()

    outcome = await asyncio.to_thread(emergency.emergency_halt, unique_id, "verification failed: walk_forward",
                                      tmp_path, connection, alert_command="", alert_webhook="")

    assert outcome["halt"]["accepted"] is True
    assert requests[0]["command"] == "halt" and requests[0]["reason"] == "verification failed: walk_forward"
    event = json.loads((await events.next_msg(timeout=5)).data)
    assert event["kind"] == "alert" and event["actor"] == "verify"
    assert "alert event published" in outcome["alert"]

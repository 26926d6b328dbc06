"""What execution asks the deployer to halt: a reconciliation report whose action is halt, or a HaltRequest
(the repeated-execution throttle), halts the strategy (latched, audited; a message heard twice has one
command id); other reports change nothing."""

import asyncio
import json

import pytest

from qmp_core import bus, subjects
from qmp_core.messages import HaltRequest, PositionDifference, ReconciliationReport, encode
from qmp_deployer.app import create_app
from qmp_ops.testing import connect_as, settings_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def deployer(nats_credentials, database_url, operator_nc):
    app = create_app(settings_for(nats_credentials, "deployer", database_url, run_dir="/tmp/qmp-test-run"))
    async with app:
        yield app


async def operator_entry(operator_nc, strategy: str) -> dict | None:
    kv = await bus.control_bucket(operator_nc.jetstream())
    try:
        return json.loads((await kv.get(subjects.control_key(strategy, "deployer"))).value)
    except Exception:
        return None


async def test_report_when_action_is_halt_then_the_deployer_halts_the_strategy_and_other_actions_do_nothing(
        deployer, nats_credentials, operator_nc, unique_id):
    execution = await connect_as(nats_credentials, "execution")  # who publishes the reports
    other = unique_id + "x"
    try:
        for strategy, action in ((other, "reported"), (unique_id, "halt"), (unique_id, "halt")):
            report = ReconciliationReport(
                strategy=strategy, venue="alpaca", policy="halt" if action == "halt" else "report", action=action,
                differences=[PositionDifference(symbol="TSLA", booked=0.0, venue=3.0)],
                reason="reconciliation: positions differ at the venue (TSLA: books 0, venue 3)", ts_event=42)
            await execution.publish(subjects.reconciliation_reports(strategy), encode(report))
        await execution.flush()
        entry = None
        for _ in range(100):
            entry = await operator_entry(operator_nc, unique_id)
            if entry is not None:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the repeated report and the other strategy's had their chance
        untouched = await operator_entry(operator_nc, other)
    finally:
        await execution.close()

    assert entry is not None and entry["status"] == "HALTED" and "TSLA: books 0, venue 3" in entry["reason"]
    assert entry["command_id"] == f"reconciliation-{unique_id}-42" and entry["issued_by"] == "deployer"
    assert untouched is None


async def test_halt_request_when_the_throttle_tripped_then_the_deployer_halts_the_strategy_with_its_reason(
        deployer, nats_credentials, operator_nc, unique_id):
    execution = await connect_as(nats_credentials, "execution")
    try:
        request = HaltRequest(strategy=unique_id, reason="REPEATED_EXECUTION: 5 fills of AAA BUY within 60s",
                              reason_code="REPEATED_EXECUTION", ts_event=7)
        await execution.publish(subjects.halt_requests(unique_id), encode(request))
        await execution.flush()
        entry = None
        for _ in range(100):
            entry = await operator_entry(operator_nc, unique_id)
            if entry is not None:
                break
            await asyncio.sleep(0.05)
    finally:
        await execution.close()

    assert entry is not None and entry["status"] == "HALTED" and entry["reason"].startswith("REPEATED_EXECUTION")
    assert entry["command_id"] == f"halt-request-{unique_id}-7"

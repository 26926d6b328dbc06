"""`qmp halt / resume / status` over a real nats-server: the request they send and the state they show."""

import asyncio
import json

import pytest
from nats.aio.client import Client

from qmp_core import bus, subjects
from qmp_core.messages import TradingState, encode
from qmp_ops.cli.control import gather_status, kill_and_report, send_control
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.runtime.supervisor import SERVICES
from qmp_ops.testing import operator_connection

pytestmark = pytest.mark.integration




async def test_send_control_when_owner_answers_then_reply_returned_and_operator_command_with_id_sent(
        nats_credentials: NatsCredentials, operator_nc: Client, unique_id: str, tmp_path) -> None:
    requests: list[tuple[str, dict]] = []

    async def owner(msg) -> None:
        requests.append((msg.subject, json.loads(msg.data)))
        await msg.respond(json.dumps({"accepted": True, "state": {"status": "HALTED"}}).encode())

    for urgent in (False, True):
        await operator_nc.subscribe(subjects.control(unique_id, urgent=urgent), cb=owner)
    await operator_nc.flush()
    connection = operator_connection(nats_credentials, run_dir=str(tmp_path))

    reply = await send_control(connection, unique_id, {"command": "halt", "reason": "check"})
    await send_control(connection, unique_id, {"command": "resume"})

    assert reply["accepted"] is True
    (halt_subject, halt), (resume_subject, _resume) = requests
    assert halt["command"] == "halt" and halt["issued_by"] == "operator" and len(halt["command_id"]) == 32
    assert halt_subject == subjects.control(unique_id, connection.sender, urgent=True)  # halts' own lane
    assert resume_subject == subjects.control(unique_id, connection.sender)


async def test_gather_status_when_entries_in_bucket_then_every_service_listed_and_effective_states(
        nats_credentials: NatsCredentials, unique_id: str, tmp_path) -> None:
    writer = await nats_credentials.connect("deployer")
    try:
        kv = await bus.control_bucket(writer.jetstream())
        await kv.put(subjects.control_key(unique_id, "operator"),
                     encode(TradingState(strategy=unique_id, status="HALTED", reason="by hand")))
        await kv.put(subjects.control_key(unique_id, "deployer"), encode(TradingState(strategy=unique_id,
                                                                                      allocation=0.1)))
        broken = f"{unique_id}b"
        await kv.put(subjects.control_key(broken, "risk"), b"not a state")

        status = await asyncio.wait_for(gather_status(operator_connection(nats_credentials, run_dir=str(tmp_path))), 30)
    finally:
        await writer.drain()

    assert set(status["services"]) == set(SERVICES)  # each answered, or reported down
    mine = status["strategies"][unique_id]
    assert (mine["status"], mine["reason"], mine["allocation"]) == ("HALTED", "by hand", 0.1)
    assert status["strategies"][broken]["status"] == "HALTED"  # a corrupt entry reads as a halt here too
    control = next(s for s in status["streams"] if s["stream"] == f"KV_{subjects.KV_CONTROL}")
    assert control["messages"] >= 3 and 0 < control["bytes"] < control["max_bytes"]
    assert control["share_of_limit"] > 0 and control["bytes_per_hour"] is not None and control["bytes_per_hour"] > 0


async def test_kill_when_no_execution_answers_then_the_halt_is_applied_and_no_report_is_awaited(
        nats_credentials: NatsCredentials, operator_nc: Client, unique_id: str) -> None:
    # A deployer answers control; no execution instance runs on this server's health subject.
    async def deployer(msg) -> None:
        body = json.loads(msg.data)
        await msg.respond(json.dumps({"accepted": True, "command_id": body["command_id"],
                                      "state": {"strategy": unique_id, "status": "HALTED"}}).encode())

    sub = await operator_nc.subscribe(subjects.control(unique_id, "operator", urgent=True), cb=deployer)
    try:
        started = asyncio.get_running_loop().time()
        reply, reports, silent = await kill_and_report(operator_connection(nats_credentials), unique_id, False,
                                                       "test", timeout_s=5.0)
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        await sub.unsubscribe()

    assert reply["accepted"] is True and reports == [] and silent == []
    assert elapsed < 2.0  # nobody hosts it: nothing to wait for

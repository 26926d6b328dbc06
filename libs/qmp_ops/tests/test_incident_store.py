"""`qmp incident`'s trigger from a real PostgreSQL: the latest halt by event time, a person's halt (which
carries no event time of its own) placed by the state it left."""

import json
import time
import uuid

import asyncpg
import pytest
from nats.aio.client import Client

from qmp_ops.incident import NoIncident, Window, reconstruct

pytestmark = pytest.mark.integration


async def audit(db: asyncpg.Connection, strategy: str, verb: str, command_ts: int, state_ts: int, sender: str) -> str:
    command_id = uuid.uuid4().hex
    await db.execute(
        "INSERT INTO control_audit (strategy, command_id, command, state, sender) VALUES ($1, $2, $3, $4, $5)",
        strategy, command_id,
        json.dumps({"command": verb, "command_id": command_id, "ts_event": command_ts, "issued_by": sender,
                    "reason": f"{verb} by {sender}"}),
        json.dumps({"strategy": strategy, "status": "HALTED", "ts_event": state_ts, "traceparent": ""}), sender)
    return command_id


async def test_reconstruct_when_a_breaker_halted_then_a_person_halted_later_then_the_persons_halt_is_the_trigger(
        database_url: str, operator_nc: Client, unique_id: str) -> None:
    now = time.time_ns()
    db = await asyncpg.connect(database_url)
    try:
        await audit(db, unique_id, "halt", now - 3_600 * 10**9, now - 3_600 * 10**9, "risk")
        person = await audit(db, unique_id, "halt", 0, now, "operator")  # the CLI sends no event time
        found = await reconstruct(db, operator_nc, unique_id, Window())
        with pytest.raises(NoIncident):
            await reconstruct(db, operator_nc, unique_id, Window(until_ns=now - 7_200 * 10**9))
    finally:
        await db.close()

    assert found.trigger.command_id == person and found.trigger.ts_event == now
    commands = [e.title for e in found.events if e.kind == "command"]
    assert commands == ["halt by risk → HALTED", "halt by operator → HALTED"]
    assert found.timings_ms == {} and found.steps == []  # no trace of it in any run directory

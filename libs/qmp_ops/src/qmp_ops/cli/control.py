"""Operator verbs over the bus: halt, resume, status. Plain JSON requests, as in the README."""

import json
import uuid
from typing import Any

import msgspec
import nats

from qmp_core import subjects
from qmp_core.trading_state import ControlEntries
from qmp_ops.runtime.supervisor import SERVICES, Connection

REQUEST_TIMEOUT_S = 5.0


async def send_control(connection: Connection, strategy: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send one control command as a request and return the decoded reply."""
    body = {"issued_by": "operator", "command_id": uuid.uuid4().hex, **body}
    nc = await connection.connect()
    try:
        reply = await nc.request(subjects.control(strategy), json.dumps(body).encode(), timeout=REQUEST_TIMEOUT_S)
    finally:
        await nc.close()
    return json.loads(reply.data)


async def gather_status(connection: Connection) -> dict[str, Any]:
    """Return each service's health and each strategy's effective trading state."""
    nc = await connection.connect()
    try:
        health: dict[str, Any] = {}
        for service in SERVICES:
            try:
                reply = await nc.request(subjects.health(service), b"", timeout=1.0)
                health[service] = json.loads(reply.data)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                health[service] = {"service": service, "status": "down"}
        states = await _states(nc)
    finally:
        await nc.close()
    return {"services": health, "strategies": states}


async def _states(nc: nats.NATS) -> dict[str, dict[str, Any]]:
    """Return each strategy's effective state as the bucket holds it now (the same rule execution enforces)."""
    js = nc.jetstream()
    try:
        kv = await js.key_value(subjects.KV_CONTROL)
        keys = await kv.keys()
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.NoKeysError):
        return {}
    entries = ControlEntries()
    for key in keys:
        entry = await kv.get(key)
        if entry.value:
            entries.put(key, entry.value)
    return {strategy: msgspec.to_builtins(entries.effective(strategy)) for strategy in sorted(entries.strategies())}

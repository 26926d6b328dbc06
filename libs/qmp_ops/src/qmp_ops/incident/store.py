"""What `qmp incident` reads: the stack's tables and the denied orders on the bus, in event time.

Every table keeps its rows in event time (`ts`), except the control audit, whose `ts` is when the deployer
wrote the row: a command is placed by the event time it carries (`command.ts_event`), or, for a command an
operator sent during a replay (stamped with the wall clock), by when it was written.
"""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from qmp_core import bus, subjects
from qmp_core.clock import to_datetime, to_ns
from qmp_core.messages import execution_events

# A command's event time: the one it carries, else (a person's command, sent with none) the state's it left.
EVENT_TIME = "COALESCE(NULLIF((command->>'ts_event')::bigint, 0), (state->>'ts_event')::bigint)"
# The latest command that halted (a halt or a kill), of one strategy or of any, up to `until`.
LATEST_HALT = f"""
SELECT strategy, command, state, sender, ts AS written FROM control_audit
WHERE ($1::text IS NULL OR strategy = $1) AND command->>'command' IN ('halt', 'kill')
  AND {EVENT_TIME} BETWEEN $2 AND $3
ORDER BY {EVENT_TIME} DESC, id DESC LIMIT 1
"""
# Every command that halted (halts and kills), latest first: the incidents to review.
HALTS = f"""
SELECT strategy, command, state, sender, ts AS written, {EVENT_TIME} AS ts_event FROM control_audit
WHERE command->>'command' IN ('halt', 'kill') ORDER BY id DESC LIMIT $1
"""
COMMAND_BY_ID = ("SELECT strategy, command, state, sender, ts AS written FROM control_audit WHERE command_id = $1 "
                 "LIMIT 1")
LATEST_BREAKER = """
SELECT strategy, ts, breaker, event, value, threshold, action, detail FROM breaker_events
WHERE ($1::text IS NULL OR strategy = $1) AND breaker = $2 AND event = 'BreakerTripped'
ORDER BY ts DESC LIMIT 1
"""
COMMANDS = f"""
SELECT strategy, command, state, sender, ts AS written FROM control_audit
WHERE strategy IN ($1, 'ALL') AND ({EVENT_TIME} BETWEEN $2 AND $3 OR ts BETWEEN $4 AND $5)
ORDER BY id
"""
BREAKERS = """
SELECT ts, breaker, event, value, threshold, action, detail FROM breaker_events
WHERE strategy = $1 AND ts BETWEEN $2 AND $3 ORDER BY ts, breaker
"""
DEPLOYMENTS = """
SELECT ts, rollout_id, seq, kind, phase_from, phase_to, trigger, issued_by, command_id, allocation_before,
       allocation_after
FROM deployment_events WHERE strategy = $1 AND ts BETWEEN $2 AND $3 ORDER BY ts, seq
"""
SNAPSHOTS = """
SELECT ts, equity, drawdown_24h, var, es FROM risk_snapshots
WHERE strategy = $1 AND ts BETWEEN $2 AND $3 ORDER BY ts
"""
FILLS = """
SELECT ts, order_id, symbol, side, quantity, price, slippage_bps FROM fills
WHERE strategy = $1 AND ts BETWEEN $2 AND $3 ORDER BY ts, fill_id
"""


@dataclass(frozen=True)
class Records:
    """The rows of one strategy between two event times, as plain dicts with `ts_event` in ns."""

    strategy: str
    breakers: list[dict[str, Any]]
    commands: list[dict[str, Any]]
    deployments: list[dict[str, Any]]
    snapshots: list[dict[str, Any]]
    fills: list[dict[str, Any]]
    denied: list[dict[str, Any]]


def _row(record: asyncpg.Record) -> dict[str, Any]:
    row = dict(record)
    for key in ("command", "state", "var", "es"):  # jsonb arrives as text: asyncpg has no codec set for it
        if isinstance(row.get(key), str):
            row[key] = json.loads(row[key])
    if isinstance(row.get("ts"), datetime):
        row["ts_event"] = to_ns(row.pop("ts"))
    return row


async def latest_halt(connection: asyncpg.Connection, strategy: str | None, since_ns: int,
                      until_ns: int) -> dict[str, Any] | None:
    record = await connection.fetchrow(LATEST_HALT, strategy, since_ns, until_ns)
    return None if record is None else _row(record)


async def halts(connection: asyncpg.Connection, limit: int = 100) -> list[dict[str, Any]]:
    """The latest commands that halted a strategy (halts and kills), latest first."""
    return [{"strategy": r["strategy"], "command": json.loads(r["command"]), "state": json.loads(r["state"]),
             "sender": r["sender"], "ts_event": int(r["ts_event"] or 0)}
            for r in await connection.fetch(HALTS, limit)]


async def command(connection: asyncpg.Connection, command_id: str) -> dict[str, Any] | None:
    record = await connection.fetchrow(COMMAND_BY_ID, command_id)
    return None if record is None else _row(record)


async def latest_trip(connection: asyncpg.Connection, strategy: str | None, breaker: str) -> dict[str, Any] | None:
    record = await connection.fetchrow(LATEST_BREAKER, strategy, breaker)
    return None if record is None else _row(record)


async def records(connection: asyncpg.Connection, nc: Any, strategy: str, start_ns: int, end_ns: int,
                  wall_start: datetime, wall_end: datetime) -> Records:
    """Read what happened to `strategy` between two event times (commands also by when they were written)."""
    start, end = to_datetime(start_ns), to_datetime(end_ns)

    async def fetch(query: str, *args: Any) -> list[dict[str, Any]]:
        return [_row(r) for r in await connection.fetch(query, *args)]

    return Records(
        strategy=strategy,
        breakers=await fetch(BREAKERS, strategy, start, end),
        commands=await fetch(COMMANDS, strategy, start_ns, end_ns, wall_start, wall_end),
        deployments=await fetch(DEPLOYMENTS, strategy, start, end),
        snapshots=await fetch(SNAPSHOTS, strategy, start, end),
        fills=await fetch(FILLS, strategy, start, end),
        denied=await denied_orders(nc, strategy, start_ns, end_ns),
    )


async def denied_orders(nc: Any, strategy: str, start_ns: int, end_ns: int) -> list[dict[str, Any]]:
    """The strategy's denied orders between two event times, from the execution stream (they have no table):
    one message each, or a replay's BatchEvents."""
    denied: list[dict[str, Any]] = []
    async for stored in bus.read_stream(nc, subjects.STREAM_EXEC, f"qmp.exec.{strategy}.*"):
        try:
            decisions, _ = execution_events(stored.subject, stored.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # execution dead-letters what it cannot read; nothing undecodable is its own decision
        denied += [msgspec.to_builtins(event) for event in decisions
                   if event.__struct_config__.tag == "OrderDenied" and start_ns <= event.ts_event <= end_ns]
    return denied

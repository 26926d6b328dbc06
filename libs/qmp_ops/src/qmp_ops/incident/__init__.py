"""`qmp incident`: an incident reconstructed from the stack's records and the services' traces.

`store` reads (tables, the execution stream), `timeline` lays the incident out (pure), `report` writes it as
HTML and JSON; `reconstruct` here ties them together for the CLI.
"""

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

from qmp_ops import traces
from qmp_ops.incident import store
from qmp_ops.incident.timeline import Incident, incident, trace_id_of

__all__ = ["Incident", "NoIncident", "Window", "reconstruct"]


class NoIncident(LookupError):
    """Nothing halted in the window, or `around` names nothing known."""


@dataclass(frozen=True)
class Window:
    """Where to look for the trigger (event time, ns) and how much to show around it (ns)."""

    since_ns: int = 0
    until_ns: int = 2**63 - 1
    before_ns: int = 5 * 86_400 * 10**9
    after_ns: int = 5 * 86_400 * 10**9


def _command_in_trace(traces_dir: Path | None, wanted: str) -> str:
    """The command id a trace holds, for a trace found by an order id, a trace id or any attribute."""
    if traces_dir is None or not traces_dir.is_dir():
        return ""
    found, _ = traces.find(traces_dir, wanted, limit=1)
    pending = list(found[0]) if found else []
    while pending:
        span = pending.pop()
        if span.name == "deployer.control" and span.attributes.get("qmp.command_id"):
            return str(span.attributes["qmp.command_id"])
        pending.extend(span.children)
    return ""


async def _trigger(db: asyncpg.Connection, strategy: str | None, window: Window, around: str,
                   traces_dir: Path | None) -> dict[str, Any]:
    if not around:
        row = await store.latest_halt(db, strategy, window.since_ns, window.until_ns)
        if row is None:
            raise NoIncident("no halt or kill in the window" + (f" for {strategy}" if strategy else ""))
        return row
    row = await store.command(db, around)
    if row is None:
        trip = await store.latest_trip(db, strategy, around)
        if trip is not None:
            row = await store.latest_halt(db, trip["strategy"], trip["ts_event"], trip["ts_event"])
    if row is None:
        command_id = await asyncio.to_thread(_command_in_trace, traces_dir, around)
        row = await store.command(db, command_id) if command_id else None
    if row is None:
        raise NoIncident(f"{around!r} is no control command, no breaker that halted, and in no trace of a command")
    return row


async def reconstruct(db: asyncpg.Connection, nc: Any, strategy: str | None, window: Window, around: str = "",
                      traces_dir: Path | None = None) -> Incident:
    """Find the trigger (the latest halt, or the one `around` names), read what surrounds it, lay it out."""
    row = await _trigger(db, strategy, window, around, traces_dir)
    ts = int(row["command"].get("ts_event") or row["state"].get("ts_event") or 0)
    written = row["written"]
    records = await store.records(db, nc, row["strategy"], ts - window.before_ns, ts + window.after_ns,
                                  written - timedelta(microseconds=window.before_ns // 1000),
                                  written + timedelta(microseconds=window.after_ns // 1000))
    wanted = trace_id_of(row["state"].get("traceparent", "")) or row["command"].get("command_id", "")
    roots = await asyncio.to_thread(_trace, traces_dir, wanted)
    return incident(row, records, roots)


def _trace(traces_dir: Path | None, wanted: str) -> list[traces.Span]:
    """The root spans of the trace that holds `wanted` in the run's files (none without files)."""
    if traces_dir is None or not traces_dir.is_dir() or not wanted:
        return []
    found, _ = traces.find(traces_dir, wanted, limit=1)
    return found[0] if found else []

"""An incident laid out from what the stack recorded: no I/O.

The trigger is a command that halted a strategy (a breaker's halt, or a person's halt or kill). Around it,
in event time: breaker trips and releases, control commands with the state each left, deployment events,
denied orders and fills, each joined to its trace where one is known. The chain is the trigger's trace:
the market data that set it off (the collector's publish), risk's breaker command, the deployer applying
it, and execution denying orders under it, with the wall-clock time between each; the same steps are also
timed in event time (how many bars passed before the first denial).
"""

from dataclasses import asdict, dataclass, field
from typing import Any

from qmp_core.clock import to_datetime
from qmp_ops.incident.store import Records
from qmp_ops.traces import Span

KINDS = ("breaker", "command", "deployment", "denied", "fill")
# The steps of a halt's trace, by span name, in the order they happen.
DATA, BREAKER, APPLIED, DENIED = "collector.publish_batch", "risk.control", "deployer.control", "execution.denied"


@dataclass(frozen=True)
class Event:
    ts_event: int
    kind: str  # one of KINDS
    title: str
    detail: str = ""
    command_id: str = ""
    order_id: str = ""
    trace_id: str = ""
    action: str = ""  # a breaker's: what it asked for (halt, reduce, close <symbol>, ...)


@dataclass(frozen=True)
class Step:
    """One span of the trigger's trace, placed from the trace's first span (ms)."""

    service: str
    name: str
    start_ms: float
    duration_ms: float
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Incident:
    strategy: str
    trigger: Event
    events: list[Event]
    trace_id: str = ""
    steps: list[Step] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)  # wall clock, from the trace
    event_timings_s: dict[str, float] = field(default_factory=dict)  # event time, from the records
    series: dict[str, list[Any]] = field(default_factory=dict)  # ts, equity, drawdown_24h, var_99, es_99

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def trace_id_of(traceparent: str) -> str:
    """The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), "" when there is none."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else ""


def command_event(row: dict[str, Any]) -> Event:
    command, state = row["command"], row["state"]
    verb = command.get("command", "?")
    who = row.get("sender") or command.get("issued_by", "?")
    reason = command.get("reason") or state.get("reason") or ""
    return Event(ts_event=int(command.get("ts_event") or state.get("ts_event") or 0), kind="command",
                 title=f"{verb} by {who} → {state.get('status', '?')}", detail=reason,
                 command_id=command.get("command_id", ""), trace_id=trace_id_of(state.get("traceparent", "")))


def events_of(records: Records, denied_traces: dict[str, str]) -> list[Event]:
    """Every record as a timeline event, in event time; `denied_traces` maps an order id to its trace."""
    events = [Event(ts_event=row["ts_event"], kind="breaker",
                    title=f"{row['breaker']} {'tripped' if row['event'] == 'BreakerTripped' else 'released'}",
                    detail=f"{row['value']:.4g} against {row['threshold']:.4g}: {row['action']}"
                           + (f" ({row['detail']})" if row.get("detail") else ""), action=row["action"])
              for row in records.breakers]
    events += [command_event(row) for row in records.commands]
    events += [Event(ts_event=row["ts_event"], kind="deployment",
                     title=f"rollout {row['kind'].replace('_', ' ')} {row['phase_from']} → {row['phase_to']}",
                     detail=f"allocation {row['allocation_before']:g} → {row['allocation_after']:g}; "
                            f"{row['trigger'] or row['issued_by']}", command_id=row.get("command_id", ""))
               for row in records.deployments]
    events += [Event(ts_event=row["ts_event"], kind="denied", title=f"{row['side']} {row['symbol']} denied",
                     detail=f"{row.get('reason_code', '')}: {row.get('reason', '')}"
                            + (f" (×{row['count']})" if row.get("count", 1) > 1 else ""),
                     order_id=row["order_id"], trace_id=denied_traces.get(row["order_id"], ""))
               for row in records.denied]
    events += [Event(ts_event=row["ts_event"], kind="fill",
                     title=f"{row['side']} {row['quantity']:g} {row['symbol']} @ {row['price']:g}",
                     detail=f"slippage {row['slippage_bps']:.2f} bps", order_id=row["order_id"])
               for row in records.fills]
    return sorted(events, key=lambda e: (e.ts_event, KINDS.index(e.kind)))


def _flatten(roots: list[Span]) -> list[Span]:
    spans: list[Span] = []
    stack = list(reversed(roots))
    while stack:
        span = stack.pop()
        spans.append(span)
        stack.extend(reversed(span.children))
    return spans


def chain_of(roots: list[Span]) -> tuple[list[Step], dict[str, float]]:
    """The trigger's trace as steps from its first span, and the wall-clock time between the halt's steps."""
    spans = _flatten(roots)
    if not spans:
        return [], {}
    origin = min(span.start_ns for span in spans)
    steps = [Step(service=span.service, name=span.name, start_ms=(span.start_ns - origin) / 1e6,
                  duration_ms=span.duration_ms, attributes=dict(span.attributes))
             for span in sorted(spans, key=lambda s: s.start_ns)]

    def first(name: str) -> Span | None:
        named = [span for span in spans if span.name == name]
        return min(named, key=lambda s: s.start_ns) if named else None

    data, breaker, applied, denied = first(DATA), first(BREAKER), first(APPLIED), first(DENIED)
    timings: dict[str, float] = {}
    if data is not None and breaker is not None:
        timings["market data → breaker's command"] = (breaker.start_ns - data.start_ns) / 1e6
    if breaker is not None and applied is not None:
        timings["breaker's command → halt applied"] = (applied.end_ns - breaker.start_ns) / 1e6
    if breaker is not None and denied is not None:
        timings["breaker's command → first denied order"] = (denied.start_ns - breaker.start_ns) / 1e6
    if data is not None and denied is not None:
        timings["market data → first denied order"] = (denied.start_ns - data.start_ns) / 1e6
    return steps, timings


def event_timings(trigger: Event, events: list[Event]) -> dict[str, float]:
    """Event time (s) from the breaker that tripped to the halt and to the first order denied after it."""
    timings: dict[str, float] = {}
    breaker = next((e for e in reversed(events) if e.kind == "breaker" and e.ts_event <= trigger.ts_event
                    and e.action == "halt" and e.title.endswith("tripped")), None)
    start = breaker.ts_event if breaker is not None else trigger.ts_event
    if breaker is not None:
        timings["breaker tripped → halt applied"] = (trigger.ts_event - breaker.ts_event) / 1e9
    denied = next((e for e in events if e.kind == "denied" and e.ts_event >= trigger.ts_event), None)
    if denied is not None:
        timings["trigger → first denied order"] = (denied.ts_event - start) / 1e9
    return timings


def series_of(records: Records) -> dict[str, list[Any]]:
    """Equity, drawdown over 24 h and the 99% historical VaR and ES around the incident, per snapshot."""
    rows = records.snapshots
    return {
        "ts": [to_datetime(row["ts_event"]).isoformat() for row in rows],
        "equity": [row["equity"] for row in rows],
        "drawdown_24h": [row["drawdown_24h"] for row in rows],
        "var_99": [(row.get("var") or {}).get("historical_99") for row in rows],
        "es_99": [(row.get("es") or {}).get("historical_99") for row in rows],
    }


def incident(trigger_row: dict[str, Any], records: Records, trace: list[Span]) -> Incident:
    """Lay out the incident of a halting command (a control audit row) from the records and its trace."""
    trigger = command_event(trigger_row)
    steps, timings = chain_of(trace)
    denied_traces = {str(step.attributes.get("qmp.order_id")): trace[0].trace_id
                     for step in steps if step.name == DENIED} if trace else {}
    events = events_of(records, denied_traces)
    trace_id = trigger.trace_id or (trace[0].trace_id if trace else "")
    # The breaker that asked for this halt, at the trigger's event time, is the head of the same trace.
    events = [Event(**{**asdict(e), "trace_id": trace_id}) if e.kind == "breaker" and e.action == "halt"
              and e.ts_event == trigger.ts_event and trace_id else e for e in events]
    return Incident(strategy=records.strategy, trigger=trigger, events=events, trace_id=trace_id, steps=steps,
                    timings_ms=timings, event_timings_s=event_timings(trigger, events), series=series_of(records))

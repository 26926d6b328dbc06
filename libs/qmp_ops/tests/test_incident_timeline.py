from pathlib import Path

from qmp_core.clock import NS_PER_DAY, to_datetime
from qmp_ops.incident.report import write_html
from qmp_ops.incident.store import Records
from qmp_ops.incident.timeline import incident, trace_id_of
from qmp_ops.traces import Span

DAY = 14_000 * NS_PER_DAY
TRACE = "ab" * 16
TRACEPARENT = f"00-{TRACE}-{'cd' * 8}-01"
COMMAND_ID = f"risk:drawdown_24h:s:{DAY}"


def span(name: str, service: str, start_ms: float, duration_ms: float, parent: str = "", **attributes: object) -> Span:
    origin = 1_700_000_000 * 10**9
    return Span(trace_id=TRACE, span_id=name, parent_id=parent, name=name, service=service,
                start_ns=origin + int(start_ms * 1e6), end_ns=origin + int((start_ms + duration_ms) * 1e6), status="OK",
                attributes=dict(attributes))


def halt_trace() -> list[Span]:
    publish = span("collector.publish_batch", "collector", 0, 2)
    bars = span("execution.bars", "execution", 3, 5, "collector.publish_batch")
    control = span("risk.control", "risk", 9, 4, "execution.bars", **{"qmp.breaker": "drawdown_24h"})
    applied = span("deployer.control", "deployer", 10, 2.5, "risk.control", **{"qmp.command_id": COMMAND_ID})
    denied = span("execution.denied", "execution", 30, 0.01, "deployer.control", **{"qmp.order_id": "s-2-AAA"})
    publish.children, bars.children, control.children, applied.children = [bars], [control], [applied], [denied]
    return [publish]


def records() -> Records:
    halt = {"strategy": "s", "sender": "risk",
            "command": {"command": "halt", "issued_by": "risk", "command_id": COMMAND_ID, "ts_event": DAY,
                        "reason": "drawdown over 24h 3.04% > 3.00%"},
            "state": {"status": "HALTED", "traceparent": TRACEPARENT, "ts_event": 1}}
    return Records(
        strategy="s",
        breakers=[{"ts_event": DAY, "breaker": "stop_loss:BBB", "event": "BreakerTripped", "value": -0.2,
                   "threshold": -0.15, "action": "close BBB", "detail": ""},
                  {"ts_event": DAY, "breaker": "drawdown_24h", "event": "BreakerTripped", "value": 0.0304,
                   "threshold": 0.03, "action": "halt", "detail": "drawdown over 24h 3.04% > 3.00%"}],
        commands=[halt],
        deployments=[],
        snapshots=[{"ts_event": DAY + i * NS_PER_DAY, "equity": 1e6 - i, "drawdown_24h": 0.01 * i,
                    "var": {"historical_99": 0.02}, "es": {"historical_99": 0.03}} for i in range(-2, 3)],
        fills=[{"ts_event": DAY - NS_PER_DAY, "order_id": "s-1-AAA", "symbol": "AAA", "side": "BUY",
                "quantity": 10.0, "price": 5.0, "slippage_bps": 2.0}],
        denied=[{"ts_event": DAY + NS_PER_DAY, "order_id": "s-2-AAA", "symbol": "AAA", "side": "BUY",
                 "reason_code": "HALTED", "reason": "HALTED: drawdown", "count": 1}],
    )


def test_incident_when_a_breaker_halts_then_the_chain_is_timed_and_the_halt_breaker_and_denial_join_its_trace():
    data = records()
    found = incident(data.commands[0], data, halt_trace())

    assert found.trigger.command_id == COMMAND_ID and found.trace_id == TRACE
    assert found.timings_ms == {
        "market data → breaker's command": 9.0,
        "breaker's command → halt applied": 3.5,  # the deployer's span ends at 12.5 ms
        "breaker's command → first denied order": 21.0,
        "market data → first denied order": 30.0,
    }
    assert found.event_timings_s == {"breaker tripped → halt applied": 0.0, "trigger → first denied order": 86400.0}
    traced = {(e.kind, e.title.split()[0]) for e in found.events if e.trace_id == TRACE}
    # the halting breaker, the command and the denial are in the trace; the stop-loss and the fill are not
    assert traced == {("breaker", "drawdown_24h"), ("command", "halt"), ("denied", "BUY")}
    assert [e.kind for e in found.events] == ["fill", "breaker", "breaker", "command", "denied"]
    assert found.steps[0].name == "collector.publish_batch" and len(found.steps) == 5
    assert found.series["ts"][0] == to_datetime(DAY - 2 * NS_PER_DAY).isoformat()


def test_incident_when_no_trace_was_kept_then_event_times_still_tell_the_chain():
    data = records()
    found = incident(data.commands[0], data, [])

    assert found.timings_ms == {} and found.steps == []
    assert found.trace_id == TRACE  # from the state the command left, though no span of it was found
    assert found.event_timings_s["trigger → first denied order"] == 86400.0


def test_trace_id_of_when_traceparent_malformed_or_empty_then_empty():
    assert trace_id_of(TRACEPARENT) == TRACE
    assert trace_id_of("") == "" and trace_id_of("garbage") == ""


def test_write_html_when_written_then_every_section_is_there_with_inline_charts_and_nothing_fetched(tmp_path: Path):
    data = records()
    page = write_html(incident(data.commands[0], data, halt_trace()), tmp_path / "incident.html").read_text()

    for section in ("timings", "timeline", "waterfall", "series", "events"):
        assert f'<section id="{section}">' in page
    assert page.count("<svg") == 3  # timeline, waterfall, series
    assert not any(fetch in page for fetch in ("<script", "<link", "<img", 'src="', 'href="http'))
    assert COMMAND_ID in page and "s-2-AAA" in page

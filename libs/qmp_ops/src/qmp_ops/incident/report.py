"""An incident as one self-contained HTML page (charts inline as SVG, no script, nothing fetched) and as JSON.

Sections, each with an id a test or a person can point at: `timings` (wall clock from the trace, event
time from the records), `timeline` (every event on a lane per kind, the trigger marked), `waterfall` (the
trigger's trace, span by span, per service), `series` (equity, drawdown over 24 h, VaR and ES 99% around
the incident) and `events` (the table, each row with its trace id and command or order id).
"""

import html
import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from qmp_core.clock import to_datetime
from qmp_lab.verify.report import pyplot
from qmp_ops.incident.timeline import KINDS, Incident

COLORS = {"breaker": "#d62728", "command": "#1f77b4", "deployment": "#9467bd", "denied": "#ff7f0e",
          "fill": "#2ca02c"}
SERVICE_COLORS = {"collector": "#8c564b", "risk": "#d62728", "deployer": "#1f77b4", "execution": "#ff7f0e"}
MAX_WATERFALL_SPANS = 60  # the rest of a long trace (a denial per symbol) is summed up in one line
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ccc; padding: 2px 6px; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 0.9em; } svg { max-width: 100%; height: auto; }
"""


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML


def _when(ts_ns: int) -> datetime:
    return to_datetime(ts_ns).replace(tzinfo=None)


def timeline_svg(incident: Incident) -> str:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(11, 2.8))
    try:
        for lane, kind in enumerate(KINDS):
            times = [_when(e.ts_event) for e in incident.events if e.kind == kind]
            axes.scatter(times, [lane] * len(times), s=22, color=COLORS[kind], label=f"{kind} ({len(times)})",
                         alpha=0.8, zorder=3)
        axes.axvline(_when(incident.trigger.ts_event), color="black", linestyle="--", linewidth=1,
                     label="trigger")
        axes.set_yticks(range(len(KINDS)), KINDS)
        axes.set_ylim(-0.7, len(KINDS) - 0.3)
        axes.grid(axis="x", alpha=0.3)
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        axes.set_title(f"{incident.strategy}: events in event time (UTC)", fontsize=10)
        figure.autofmt_xdate()
        return _svg(figure)
    finally:
        plt.close(figure)


def waterfall_svg(incident: Incident) -> str:
    steps = incident.steps[:MAX_WATERFALL_SPANS]
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(11, 0.6 + 0.22 * len(steps)))
    try:
        for row, step in enumerate(steps):
            axes.barh(row, max(step.duration_ms, 0.05), left=step.start_ms,
                      color=SERVICE_COLORS.get(step.service, "#7f7f7f"), height=0.7)
        axes.set_yticks(range(len(steps)), [f"{s.service}: {s.name}" for s in steps], fontsize=7)
        axes.invert_yaxis()
        axes.set_xlabel("ms from the first span of the trace (wall clock)")
        axes.grid(axis="x", alpha=0.3)
        left = len(incident.steps) - len(steps)
        axes.set_title(f"trace {incident.trace_id}" + (f" (first {len(steps)} spans; {left} more)" if left else ""),
                       fontsize=9)
        return _svg(figure)
    finally:
        plt.close(figure)


def series_svg(incident: Incident) -> str:
    series = incident.series
    times = [datetime.fromisoformat(t).replace(tzinfo=None) for t in series["ts"]]
    plt = pyplot()
    figure, (equity, drawdown, var) = plt.subplots(3, 1, figsize=(11, 6), sharex=True)
    try:
        equity.plot(times, series["equity"], color="#1f77b4")
        equity.set_ylabel("equity")
        drawdown.plot(times, [100 * d for d in series["drawdown_24h"]], color="#d62728")
        drawdown.set_ylabel("drawdown 24h %")
        var.plot(times, [None if v is None else 100 * v for v in series["var_99"]], label="VaR 99%", color="#ff7f0e")
        var.plot(times, [None if v is None else 100 * v for v in series["es_99"]], label="ES 99%", color="#9467bd")
        var.set_ylabel("% of equity")
        var.legend(fontsize=8, frameon=False)
        for axes in (equity, drawdown, var):
            axes.axvline(_when(incident.trigger.ts_event), color="black", linestyle="--", linewidth=1)
            axes.grid(alpha=0.3)
        figure.autofmt_xdate()
        return _svg(figure)
    finally:
        plt.close(figure)


def _table(header: list[str], rows: list[list[str]], numeric: frozenset[int] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=\"num\">{html.escape(c)}</td>" if i in numeric
                                    else f"<td>{html.escape(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:g} d"
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds:g} s"


def write_html(incident: Incident, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(incident))
    return path


def render_html(incident: Incident) -> str:
    """The incident as one self-contained HTML page (charts inline, nothing fetched)."""
    trigger = incident.trigger
    timing_rows = [[name, f"{ms:.2f} ms"] for name, ms in incident.timings_ms.items()]
    timing_rows += [[name + " (event time)", _duration(s)] for name, s in incident.event_timings_s.items()]
    event_rows = [[to_datetime(e.ts_event).isoformat(), e.kind, e.title, e.detail, e.command_id or e.order_id,
                   e.trace_id] for e in incident.events]
    sections = [
        f"<h1>Incident: {html.escape(incident.strategy)} — {html.escape(trigger.title)}</h1>",
        f"<p>at {html.escape(to_datetime(trigger.ts_event).isoformat())} (event time): "
        f"{html.escape(trigger.detail)}; command <code>{html.escape(trigger.command_id)}</code>"
        + (f", trace <code>{html.escape(incident.trace_id)}</code>" if incident.trace_id else "") + "</p>",
        "<section id=\"timings\"><h2>From the trigger to the halt and the first denied order</h2>"
        + (_table(["step", "time"], timing_rows, frozenset({1})) if timing_rows
           else "<p>no trace of the trigger was found, and no event after it</p>") + "</section>",
        f"<section id=\"timeline\"><h2>Timeline</h2>{timeline_svg(incident)}</section>",
        "<section id=\"waterfall\"><h2>The trigger's trace</h2>"
        + (waterfall_svg(incident) if incident.steps else "<p>no span of this trace in the run's traces</p>")
        + "</section>",
        "<section id=\"series\"><h2>Equity, drawdown and VaR / ES around it</h2>"
        + (series_svg(incident) if incident.series.get("ts") else "<p>no risk snapshot in the window</p>")
        + "</section>",
        f"<section id=\"events\"><h2>Events ({len(incident.events)})</h2>"
        + _table(["event time (UTC)", "kind", "what", "detail", "command / order", "trace"], event_rows)
        + "</section>",
    ]
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>QMP incident: "
            f"{html.escape(incident.strategy)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")


def write_json(incident: Incident, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(incident.to_json(), indent=2, default=str) + "\n")
    return path

"""`qmp incident`: what happened around a halt, from the stack's records and traces, as a page and as JSON.

    qmp incident [--strategy S] [--since T] [--until T] [--around ID] [--before 5d] [--after 5d]
                 [--out DIR] [--json] [--run-dir DIR]
"""

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qmp_core.clock import parse_ns, to_datetime
from qmp_ops.cli.monitor import seconds
from qmp_ops.runtime.supervisor import Connection, current_run_dir

console = Console()
SHOWN_EVENTS = 40


def incident(
    strategy: Annotated[str | None, typer.Option(help="the strategy (default: whichever was halted last)")] = None,
    since: Annotated[str | None, typer.Option(help="look for the halt from this event time on (2008-09-01)")] = None,
    until: Annotated[str | None, typer.Option(help="... and up to this event time")] = None,
    around: Annotated[str, typer.Option(help="the incident of this command id, breaker, order id or trace id "
                                             "(default: the latest halt or kill)")] = "",
    before: Annotated[str, typer.Option(help="event time shown before the trigger (5d, 12h)")] = "5d",
    after: Annotated[str, typer.Option(help="event time shown after the trigger")] = "5d",
    out: Annotated[Path | None, typer.Option(help="folder for incident.html and incident.json "
                                                  "(default: reports/incident-<strategy>-<time>)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the incident as JSON")] = False,
    run_dir: Annotated[Path | None, typer.Option(help="the run whose traces to join (default: the running "
                                                      "stack's, else the latest under .qmp/runs)")] = None,
) -> None:
    """Reconstruct an incident: the trigger (a breaker's halt, a person's halt or kill), the timeline of breakers,
    commands, rollout events, denied orders and fills around it joined to their traces, and the time from the
    trigger to the halt and to the first denied order; written as a self-contained HTML page and JSON."""
    from qmp_ops.incident import NoIncident, Window, reconstruct
    from qmp_ops.incident.report import write_html, write_json

    try:
        window = Window(since_ns=parse_ns(since) if since else 0, until_ns=parse_ns(until) if until else 2**63 - 1,
                        before_ns=int(seconds(before) * 1e9), after_ns=int(seconds(after) * 1e9))
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    connection = Connection.read()
    run = run_dir or current_run_dir(Path(".qmp"))
    traces_dir = run / "traces" if run is not None else None

    async def run_it():  # type: ignore[no-untyped-def]
        nc = await connection.connect()
        db = await asyncpg.connect(connection.database_url)
        try:
            return await reconstruct(db, nc, strategy, window, around, traces_dir)
        finally:
            await db.close()
            await nc.close()

    try:
        found = asyncio.run(run_it())
    except NoIncident as error:
        typer.echo(f"qmp: {error}", err=True)
        raise SystemExit(1) from None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folder = out or Path("reports") / f"incident-{found.strategy}-{stamp}"
    page, data = write_html(found, folder / "incident.html"), write_json(found, folder / "incident.json")
    if as_json:
        typer.echo(data.read_text())
        return
    trigger = found.trigger
    console.print(f"[bold]{escape(found.strategy)}[/]: {escape(trigger.title)} at "
                  f"{to_datetime(trigger.ts_event).isoformat()} (event time): {escape(trigger.detail)}",
                  highlight=False)
    console.print(f"command {escape(trigger.command_id)}" + (f", trace {found.trace_id}" if found.trace_id else ""),
                  highlight=False)
    for name, ms in found.timings_ms.items():
        console.print(f"  {escape(name)}: {ms:.2f} ms", highlight=False)
    for name, s in found.event_timings_s.items():
        console.print(f"  {escape(name)}: {s / 3600:g} h of event time", highlight=False)
    listed = [event for event in found.events if event.kind != "fill"]  # fills are many: the report has them
    fills = len(found.events) - len(listed)
    table = Table(title=f"{len(listed)} events (the first {min(SHOWN_EVENTS, len(listed))} shown) and {fills} fills",
                  title_justify="left")
    for column in ("event time", "kind", "what", "detail", "trace"):
        table.add_column(column)
    for event in listed[:SHOWN_EVENTS]:
        table.add_row(to_datetime(event.ts_event).strftime("%Y-%m-%d %H:%M:%S"), event.kind, escape(event.title),
                      escape(event.detail[:80]), event.trace_id[:12])
    console.print(table)
    console.print(f"report: {escape(str(page))} (and {escape(str(data))})", highlight=False)

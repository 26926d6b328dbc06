"""`qmp alerts`: the alerts the deployer raised (breakers, halts, gates crossing their levels and clearing,
rollbacks, failed verifications), from the audit stream, and as they come with `--follow`.

    qmp alerts [--strategy S] [--level warning] [--last 50] [--follow] [--json]
"""

import asyncio
from collections.abc import Callable
from typing import Annotated

import msgspec
import typer
from nats.aio.msg import Msg
from rich.console import Console
from rich.markup import escape

from qmp_core import bus, subjects
from qmp_core.clock import to_datetime
from qmp_core.messages import Alert, codec
from qmp_ops.runtime.supervisor import Connection

console = Console()
RANK = {"info": 0, "warning": 1, "critical": 2}
COLOURS = {"info": "green", "warning": "yellow", "critical": "bold red"}


def _line(alert: Alert) -> str:
    when = to_datetime(alert.ts_event).strftime("%Y-%m-%d %H:%M:%S")
    held = f" (+{alert.held_back} held back)" if alert.held_back else ""
    colour = COLOURS[alert.level]
    return (f"{when} [{colour}]{alert.level.upper():8s}[/] {escape(alert.title)}{escape(held)}\n"
            f"                             {escape(alert.body)}")


async def read(connection: Connection, subject: str, wanted: Callable[[Alert], bool], last: int) -> list[Alert]:
    """The latest `last` alerts on `subject` that are `wanted`, oldest first."""
    decoder = codec(Alert)
    nc = await connection.connect()
    found: list[Alert] = []
    try:
        async for stored in bus.read_stream(nc, subjects.STREAM_AUDIT, subject):
            try:
                alert = decoder.decode(stored.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if wanted(alert):
                found.append(alert)
                del found[:-last]
    finally:
        await nc.close()
    return found


async def follow(connection: Connection, subject: str, wanted: Callable[[Alert], bool], as_json: bool) -> None:
    decoder = codec(Alert)
    nc = await connection.connect(follow=True)

    async def on_alert(msg: Msg) -> None:
        try:
            alert = decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if wanted(alert):
            _show(alert, as_json)

    await nc.subscribe(subject, cb=on_alert)
    try:
        await asyncio.Event().wait()  # until Ctrl-C
    finally:
        await nc.close()


def _show(alert: Alert, as_json: bool) -> None:
    if as_json:
        typer.echo(msgspec.json.encode(alert).decode())
    else:
        console.print(_line(alert), highlight=False)


def alerts(
    strategy: Annotated[str | None, typer.Option(help="one strategy's alerts (default: every strategy's)")] = None,
    level: Annotated[str, typer.Option(help="the lowest level shown: info, warning or critical")] = "info",
    last: Annotated[int, typer.Option(min=1, help="how many of the latest to show")] = 50,
    follow_: Annotated[bool, typer.Option("--follow", help="then print new alerts as they come, until Ctrl-C")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Show the alerts the deployer raised (from the audit stream), latest last; `--follow` waits for more."""
    if level not in RANK:
        raise typer.BadParameter(f"--level must be one of {', '.join(RANK)}, not {level!r}")
    subject = subjects.alert(strategy) if strategy else subjects.ALERTS_ALL

    def wanted(alert: Alert) -> bool:
        return RANK[alert.level] >= RANK[level]

    connection = Connection.read()
    for alert in asyncio.run(read(connection, subject, wanted, last)):
        _show(alert, as_json)
    if follow_:
        try:
            asyncio.run(follow(connection, subject, wanted, as_json))
        except KeyboardInterrupt:
            return

"""`qmp limits show | apply | history`: the pre-trade limits in force, the operators' file of them, and
every change made (the audit trail on `qmp.audit.limits.<strategy>`).

The file is TOML: a table per strategy, and `[ALL]` for every strategy (a strategy's own limits win over
ALL's, ALL's over execution's settings). `apply` makes the deployer's limits equal to the file: each table
is sent as a `SetLimits` request (the deployer audits every change), and a strategy that has limits but no
table in the file has them removed. Only operators may send them (the server's permissions).

    [ALL]
    max_order_notional = 250_000
    restricted_symbols = ["GME", "AMC"]

    [vol_target]
    max_gross_exposure = 1_500_000
    max_order_rate = 20
"""

import asyncio
import json
import tomllib
import uuid
from pathlib import Path
from typing import Annotated, Any

import msgspec
import nats
import typer
from nats.js.errors import NoKeysError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qmp_core import subjects
from qmp_core.clock import to_datetime
from qmp_core.limits import LIMIT_NAMES, changed_limits
from qmp_core.messages import LimitsChanged, LimitsEntry, LimitsReply, PreTradeLimits, SetLimits, codec, encode
from qmp_ops.cli.control import REQUEST_TIMEOUT_S, execution_health
from qmp_ops.runtime.supervisor import Connection

app = typer.Typer(help="Pre-trade limits: `qmp limits show`, `qmp limits apply FILE`, `qmp limits history`.",
                  no_args_is_help=True)
console = Console()


class LimitsFileError(ValueError):
    """A limits file that cannot be applied; the message names the file, the table and the field."""


def read_limits_file(path: Path) -> dict[str, PreTradeLimits]:
    """Return the file's limits by strategy (`ALL` included); raise LimitsFileError saying what is wrong."""
    try:
        tables = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise LimitsFileError(f"{path}: {error}") from error
    limits: dict[str, PreTradeLimits] = {}
    for strategy, table in tables.items():
        try:
            subjects.check_token(strategy, "strategy")
        except ValueError as error:
            raise LimitsFileError(f"{path}: [{strategy}]: {error}") from error
        if not isinstance(table, dict):
            raise LimitsFileError(f"{path}: {strategy} must be a table ([{strategy}]) of limits")
        try:
            limits[strategy] = msgspec.convert(table, PreTradeLimits)
        except msgspec.ValidationError as error:
            raise LimitsFileError(f"{path}: [{strategy}]: {error} (limits: {', '.join(LIMIT_NAMES)})") from error
    return limits


async def read_entries(nc: nats.NATS) -> dict[str, LimitsEntry]:
    """The limits entries the deployer holds, by strategy (`ALL` included)."""
    kv = await nc.jetstream().key_value(subjects.KV_LIMITS)
    try:
        keys = await kv.keys()
    except NoKeysError:
        return {}
    decoder = codec(LimitsEntry)
    entries = {}
    for key in keys:
        entry = await kv.get(key)
        if entry.value:
            entries[key] = decoder.decode(entry.value)
    return entries


def sources(strategy: str, entries: dict[str, LimitsEntry]) -> dict[str, str]:
    """Where each limit of `strategy` comes from: its own entry, ALL's, or execution's setting."""
    own, every = entries.get(strategy), entries.get(subjects.ALL_STRATEGIES)
    found = {}
    for name in LIMIT_NAMES:
        if own is not None and getattr(own.limits, name) is not None:
            found[name] = f"{strategy} (set by {own.sender})"
        elif every is not None and getattr(every.limits, name) is not None:
            found[name] = f"ALL (set by {every.sender})"
        else:
            found[name] = f"setting QMP_{name.upper()}"
    return found


async def _show(connection: Connection) -> tuple[dict[str, LimitsEntry], dict[str, dict[str, Any]]]:
    nc = await connection.connect()
    try:
        entries = await read_entries(nc)
        in_force = {sid: detail["limits"] for health in await execution_health(nc)
                    for sid, detail in health.get("strategies", {}).items() if "limits" in detail}
        return entries, in_force
    finally:
        await nc.close()


@app.command()
def show(
    strategy: Annotated[str | None, typer.Argument(help="one strategy (default: every hosted one)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """Show the limits every hosted strategy trades under, and where each comes from (its own, ALL's, or
    execution's setting), as the running execution instances report them."""
    entries, in_force = asyncio.run(_show(Connection.read()))
    if strategy is not None:
        in_force = {sid: limits for sid, limits in in_force.items() if sid == strategy}
    if as_json:
        console.print_json(json.dumps({
            "in_force": {sid: {name: {"value": value, "from": sources(sid, entries)[name]}
                               for name, value in limits.items()} for sid, limits in sorted(in_force.items())},
            "entries": {key: msgspec.to_builtins(entry) for key, entry in sorted(entries.items())}}))
        return
    if not in_force:
        console.print("no execution instance answered: the limits set by operators are")
        for key, entry in sorted(entries.items()):
            console.print(f"  {escape(key)}: {escape(json.dumps(msgspec.to_builtins(entry.limits)))} "
                          f"(set by {escape(entry.sender)})", highlight=False)
        return
    for sid, limits in sorted(in_force.items()):
        table = Table(title=f"{sid}: pre-trade limits in force (0: off)", title_justify="left")
        for column in ("limit", "value", "from"):
            table.add_column(column)
        origin = sources(sid, entries)
        for name in LIMIT_NAMES:
            value = limits.get(name)
            table.add_row(name, escape(_shown(value)), escape(origin[name]))
        console.print(table)


def _shown(value: Any) -> str:
    """A limit as a person reads it: 1,500,000 rather than 1.5e+06; symbols listed."""
    if isinstance(value, list):
        return ", ".join(value) or "(none)"
    if isinstance(value, float | int) and not isinstance(value, bool):
        return f"{value:,.10g}"
    return str(value)


async def _apply(connection: Connection, wanted: dict[str, PreTradeLimits], reason: str,
                 dry_run: bool) -> dict[str, LimitsReply | None]:
    """Send a request per strategy whose limits the file changes (or removes); None: nothing to change."""
    nc = await connection.connect()
    decoder = codec(LimitsReply)
    try:
        entries = await read_entries(nc)
        targets = {**{key: PreTradeLimits() for key in entries}, **wanted}  # in the bucket, not in the file: none
        replies: dict[str, LimitsReply | None] = {}
        for strategy, limits in sorted(targets.items()):
            current = entries[strategy].limits if strategy in entries else PreTradeLimits()
            changed = list(changed_limits(current, limits))
            if not changed:
                replies[strategy] = None
            elif dry_run:
                replies[strategy] = LimitsReply(accepted=True, reason="dry run", changed=changed)
            else:
                request = SetLimits(limits=limits, command_id=uuid.uuid4().hex, reason=reason)
                reply = await nc.request(subjects.limits(strategy, connection.sender), encode(request),
                                         timeout=REQUEST_TIMEOUT_S)
                replies[strategy] = decoder.decode(reply.data)
        return replies
    finally:
        await nc.close()


@app.command()
def apply(
    file: Annotated[Path, typer.Argument(help="the limits file (TOML: a table per strategy, [ALL] for every one)")],
    reason: Annotated[str, typer.Option(help="why; recorded in the audit trail")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would change; change nothing")] = False,
) -> None:
    """Make the limits in force equal to the file: every change goes through the deployer, audited; a
    strategy with limits but no table in the file has them removed. Exit 1 if a change is refused."""
    try:
        wanted = read_limits_file(file)
    except LimitsFileError as error:
        typer.echo(f"qmp: {error}", err=True)
        raise typer.Exit(1) from None
    replies = asyncio.run(_apply(Connection.read(), wanted, reason, dry_run))
    refused = False
    for strategy, reply in replies.items():
        if reply is None:
            console.print(f"{escape(strategy)}: unchanged", highlight=False)
        elif not reply.accepted:
            refused = True
            console.print(f"[red]{escape(strategy)}: refused[/]: {escape(reply.reason)}", highlight=False)
        else:
            verb = "would change" if dry_run else ("removed" if reply.entry is None and strategy not in wanted
                                                   else "changed")
            console.print(f"{escape(strategy)}: {verb} {escape(', '.join(reply.changed)) or '(nothing)'}",
                          highlight=False)
    if refused:
        raise typer.Exit(1)


async def read_history(connection: Connection, strategy: str | None, limit: int) -> list[LimitsChanged]:
    """The latest `limit` changes of a strategy's limits (every strategy's when None), oldest first."""
    subject = subjects.audit_limits(strategy or "*")
    nc = await connection.connect()
    decoder = codec(LimitsChanged)
    changes: list[LimitsChanged] = []
    try:
        js = nc.jetstream()
        info = await js.stream_info(subjects.STREAM_AUDIT, subjects_filter=subject)
        count = sum((info.state.subjects or {}).values())
        if count:
            sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=nats.js.api.DeliverPolicy.ALL)
            try:
                for _ in range(count):
                    changes.append(decoder.decode((await sub.next_msg(timeout=5)).data))
            finally:
                await sub.unsubscribe()
    finally:
        await nc.close()
    return changes[-limit:]


@app.command()
def history(
    strategy: Annotated[str | None, typer.Argument(help="one strategy, or ALL (default: every one)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="the latest this many changes")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """Show who changed which limits, when and why, with the values before and after (the audit trail)."""
    changes = asyncio.run(read_history(Connection.read(), strategy, limit))
    if as_json:
        console.print_json(json.dumps([msgspec.to_builtins(change) for change in changes]))
        return
    if not changes:
        console.print("no change of pre-trade limits recorded")
        return
    table = Table(title="pre-trade limits: changes, oldest first", title_justify="left")
    for column in ("when (UTC)", "strategy", "who", "limit", "before", "after", "why"):
        table.add_column(column)
    for change in changes:
        when = to_datetime(change.ts_event).strftime("%Y-%m-%d %H:%M:%S")
        for i, name in enumerate(change.changed):
            before, after = getattr(change.before, name), getattr(change.after, name)
            table.add_row(when if i == 0 else "", change.strategy if i == 0 else "", change.sender if i == 0 else "",
                          name, escape(_shown(before) if before is not None else "(not set)"),
                          escape(_shown(after) if after is not None else "(not set)"),
                          escape(change.reason) if i == 0 else "")
    console.print(table)

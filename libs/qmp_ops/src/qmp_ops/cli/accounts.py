"""`qmp accounts add | remove | list | show | history`: trading accounts and the capital their strategies share.

An account has a venue, a base currency and its capital. A strategy trades from one account, named when it
is deployed (`qmp deploy <strategy> --account <account> [--budget <capital>]`); while its phase is live it
holds budget × allocation of the account's capital, and the deployer refuses any deploy or promotion that
would make an account's strategies hold more than its capital. Every change goes through the deployer as a
request under the operator's own name (only operators may send one), audited on `qmp.audit.accounts.<account>`.
"""

import asyncio
import contextlib
import json
import uuid
from typing import Annotated, Any

import msgspec
import typer
from nats.js.errors import NoKeysError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qmp_core import bus, subjects
from qmp_core.clock import to_datetime
from qmp_core.messages import Account, AccountChanged, AccountReply, RolloutState, SetAccount, codec, encode
from qmp_core.rollout_state import capital_held, phase_name
from qmp_ops.cli.control import REQUEST_TIMEOUT_S
from qmp_ops.cli.deploy import read_rollouts
from qmp_ops.runtime.supervisor import Connection

app = typer.Typer(help="Trading accounts: `qmp accounts add`, `list`, `show`, `remove`, `history`.",
                  no_args_is_help=True)
console = Console()
AccountId = Annotated[str, typer.Argument(help="the account's id (letters, digits, _ and -)")]


async def read_accounts(connection: Connection) -> tuple[dict[str, Account], dict[str, RolloutState]]:
    """The accounts by id, and the rollouts that name one, by strategy."""
    nc = await connection.connect()
    decoder = codec(Account)
    accounts: dict[str, Account] = {}
    try:
        kv = await nc.jetstream().key_value(subjects.KV_ACCOUNTS)
        with contextlib.suppress(NoKeysError):
            for key in await kv.keys():
                entry = await kv.get(key)
                if entry.value:
                    accounts[key] = decoder.decode(entry.value)
    finally:
        await nc.close()
    rollouts = {name: state for name, state in (await read_rollouts(connection)).items() if state.account}
    return accounts, rollouts


async def read_changes(connection: Connection, account: str | None, limit: int) -> list[AccountChanged]:
    """The latest `limit` changes of an account (of every account when None), oldest first."""
    nc = await connection.connect()
    decoder = codec(AccountChanged)
    try:
        changes = [decoder.decode(stored.data) async for stored in
                   bus.read_stream(nc, subjects.STREAM_AUDIT, subjects.audit_accounts(account or "*"))]
    finally:
        await nc.close()
    return changes[-limit:]


async def send_account_request(connection: Connection, account: str, request: SetAccount) -> AccountReply:
    nc = await connection.connect()
    try:
        reply = await nc.request(subjects.accounts(account, connection.sender), encode(request),
                                 timeout=REQUEST_TIMEOUT_S)
        return codec(AccountReply).decode(reply.data)
    finally:
        await nc.close()


def _answer(reply: AccountReply, done: str) -> None:
    if not reply.accepted:
        console.print(f"[red]refused[/]: {escape(reply.reason)}", highlight=False)
        raise typer.Exit(1)
    console.print(escape(reply.reason or done), highlight=False)


@app.command()
def add(
    account: AccountId,
    capital: Annotated[float, typer.Option(min=0.01, help="the capital its strategies' live allocations share")],
    venue: Annotated[str, typer.Option(help="where its strategies trade (paper, alpaca, an exchange id)")] = "paper",
    currency: Annotated[str, typer.Option(help="its base currency")] = "USD",
    reason: Annotated[str, typer.Option(help="why; recorded in the audit trail")] = "",
) -> None:
    """Add an account, or change one (its capital never below what its strategies' live allocations hold)."""
    try:
        request = SetAccount(venue=subjects.check_token(venue, "venue"), currency=currency.upper(), capital=capital,
                             command_id=uuid.uuid4().hex, reason=reason)
        request = msgspec.convert(msgspec.to_builtins(request), SetAccount)  # the message's own checks
    except (ValueError, msgspec.ValidationError) as error:
        raise typer.BadParameter(str(error)) from None
    reply = asyncio.run(send_account_request(Connection.read(), account, request))
    _answer(reply, f"account {account}: {capital:,.2f} {request.currency} at {venue}")


@app.command()
def remove(
    account: AccountId,
    reason: Annotated[str, typer.Option(help="why; recorded in the audit trail")] = "",
) -> None:
    """Remove an account no rollout trades from."""
    request = SetAccount(remove=True, command_id=uuid.uuid4().hex, reason=reason)
    _answer(asyncio.run(send_account_request(Connection.read(), account, request)), f"account {account} removed")


def _summary(account: Account, rollouts: dict[str, RolloutState]) -> dict[str, Any]:
    members = {name: state for name, state in rollouts.items() if state.account == account.account}
    held = sum(capital_held(state) for state in members.values())
    return {**msgspec.to_builtins(account), "held": held, "free": account.capital - held,
            "strategies": {name: {"budget": state.budget, "allocation": state.allocation, "holds": capital_held(state),
                                  "phase": phase_name(state),
                                  "status": state.status} for name, state in sorted(members.items())}}


@app.command(name="list")
def list_accounts(as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False) -> None:
    """Every account with its capital, what its strategies' live allocations hold and what is free."""
    accounts, rollouts = asyncio.run(read_accounts(Connection.read()))
    summaries = [_summary(account, rollouts) for _, account in sorted(accounts.items())]
    if as_json:
        console.print_json(json.dumps(summaries))
        return
    if not summaries:
        console.print("no account: `qmp accounts add <account> --capital <amount>`")
        return
    table = Table(title="accounts", title_justify="left")
    for column in ("account", "venue", "currency", "capital", "held live", "free", "strategies"):
        table.add_column(column, justify="right" if column in ("capital", "held live", "free") else "left")
    for s in summaries:
        table.add_row(s["account"], s["venue"], s["currency"], f"{s['capital']:,.2f}", f"{s['held']:,.2f}",
                      f"{s['free']:,.2f}", ", ".join(s["strategies"]) or "-")
    console.print(table)


@app.command()
def show(account: AccountId, as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False) -> None:
    """One account: who set it, and each strategy's budget, phase, allocation and the capital it holds."""
    accounts, rollouts = asyncio.run(read_accounts(Connection.read()))
    if account not in accounts:
        console.print(f"[red]no account {escape(account)!r}[/]; accounts: {escape(', '.join(sorted(accounts)) or '-')}")
        raise typer.Exit(1)
    summary = _summary(accounts[account], rollouts)
    if as_json:
        console.print_json(json.dumps(summary))
        return
    console.print(f"[bold]{escape(account)}[/]: {summary['capital']:,.2f} {summary['currency']} at "
                  f"{escape(summary['venue'])}, set by {escape(summary['sender'])} "
                  f"({to_datetime(summary['ts_event']).strftime('%Y-%m-%d %H:%M:%S')} UTC); "
                  f"held live {summary['held']:,.2f}, free {summary['free']:,.2f}", highlight=False)
    table = Table(title_justify="left")
    for column in ("strategy", "budget", "phase", "status", "allocation", "holds"):
        table.add_column(column)
    for name, row in summary["strategies"].items():
        table.add_row(name, f"{row['budget']:,.2f}", row["phase"], row["status"], f"{row['allocation']:.0%}",
                      f"{row['holds']:,.2f}")
    console.print(table)


@app.command()
def history(
    account: Annotated[str | None, typer.Argument(help="one account (default: every one)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="the latest this many changes")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """Who added, changed or removed which account, when and why (the audit trail)."""
    changes = asyncio.run(read_changes(Connection.read(), account, limit))
    if as_json:
        console.print_json(json.dumps([msgspec.to_builtins(change) for change in changes]))
        return
    table = Table(title="accounts: changes, oldest first", title_justify="left")
    for column in ("when (UTC)", "account", "who", "before", "after", "why"):
        table.add_column(column)

    def shown(value: Account | None) -> str:
        return "-" if value is None else f"{value.capital:,.2f} {value.currency} at {value.venue}"

    for change in changes:
        table.add_row(to_datetime(change.ts_event).strftime("%Y-%m-%d %H:%M:%S"), change.account, change.sender,
                      shown(change.before), shown(change.after), escape(change.reason))
    console.print(table)

"""The `qmp` command: up, demo, halt, resume, status, venues, contract; the rest registers on demand."""

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import asyncpg
import msgspec
import nats
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qmp_core import subjects
from qmp_core.config import StreamStorage
from qmp_core.messages import SetAccount
from qmp_lab.lock import LOCK_FILE, LOCK_LOG, lock_holding, remove_lock
from qmp_ops.cli.accounts import app as accounts_app
from qmp_ops.cli.accounts import send_account_request
from qmp_ops.cli.alerts import alerts as alerts_command
from qmp_ops.cli.control import (
    NoBrokerCommands,
    VenueRow,
    check_every_venue,
    check_venue,
    gather_status,
    kill_and_report,
    send_control,
    service_health,
)
from qmp_ops.cli.incident import incident as incident_command
from qmp_ops.cli.limits import app as limits_app
from qmp_ops.cli.monitor import monitor as monitor_command
from qmp_ops.cli.screen import watch as watch_screen
from qmp_ops.runtime.roles import roles_with
from qmp_ops.runtime.settings import STACK_OWNED, SettingsError, parse_sets, read_reports, service_sets
from qmp_ops.runtime.supervisor import (
    CONNECTION_FILE,
    Connection,
    Stack,
    StackOptions,
    StackUnavailable,
    Supervisor,
    current_run_dir,
    operator_connection_file,
    redacted,
)

app = typer.Typer(help="QMP: take a trading strategy from paper to full capital without blowing up.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(limits_app, name="limits")  # limits show | apply: an operator's verb, light to load
app.add_typer(accounts_app, name="accounts")  # accounts add | list | show | remove | history
app.command(name="monitor")(monitor_command)  # the running stack sampled: light to load as well
app.command(name="incident")(incident_command)
app.command(name="alerts")(alerts_command)
console = Console()
HOME = Path(".qmp")
BACKUPS = Path("backups")  # where `qmp backup` writes by default, and `qmp restore --latest` looks
# What names a running stack to every verb; the global flags write them (kept in this order).
STACK_VARIABLES = ("QMP_NATS_URL", "QMP_NATS_USER", "QMP_NATS_PASSWORD", "QMP_NATS_TLS_CA", "QMP_DATABASE_URL")
MB = 1024 * 1024


@app.callback()
def stack_options(
    nats_url: Annotated[str, typer.Option(help="NATS of a running stack (else .qmp/connection.json); "
                                                "env QMP_NATS_URL")] = "",
    nats_user: Annotated[str, typer.Option(help="operator user on that NATS; env QMP_NATS_USER")] = "",
    nats_password: Annotated[str, typer.Option(help="its password; env QMP_NATS_PASSWORD")] = "",
    nats_tls_ca: Annotated[str, typer.Option(help="CA file: connect with TLS; env QMP_NATS_TLS_CA")] = "",
    database_url: Annotated[str, typer.Option(help="PostgreSQL of that stack; env QMP_DATABASE_URL")] = "",
    as_operator: Annotated[str, typer.Option("--as", help="act as this named operator of `qmp up --operators` "
                                                          "(reads .qmp/operators/<name>.json)")] = "",
) -> None:
    """QMP: take a trading strategy from paper to full capital without blowing up."""
    if as_operator:
        path = operator_connection_file(HOME, as_operator)
        if not path.exists():
            raise typer.BadParameter(f"no operator {as_operator!r} here ({path} not found): start the stack with "
                                     f"`qmp up --operators {as_operator}`")
        mine = Connection(**json.loads(path.read_text()))
        nats_url, nats_user, nats_password = mine.nats_url, mine.operator_user, mine.operator_password
        database_url = database_url or mine.database_url
        nats_tls_ca = nats_tls_ca or mine.tls_ca
    # One way in for every verb: the flags set the variables Connection.read() reads.
    for name, value in zip(STACK_VARIABLES, (nats_url, nats_user, nats_password, nats_tls_ca, database_url),
                           strict=True):
        if value:
            os.environ[name] = value


@app.command()
def up(
    source: Annotated[str, typer.Option(help="market data: synthetic | history | exchange (a crypto exchange's "
                                              "bars through ccxt) | alpaca (its stock bars); the last two live, "
                                              "with --set venue_symbols=...")] = "synthetic",
    symbols: Annotated[int, typer.Option(help="synthetic universe size")] = 50,
    bar_seconds: Annotated[int, typer.Option(help="synthetic bar length in event time")] = 60,
    rate: Annotated[float, typer.Option(help="batches per second (0 = as fast as possible)")] = 10.0,
    start: Annotated[str, typer.Option(help="history start date")] = "2007-01-01",
    end: Annotated[str, typer.Option(help="history end date")] = "2009-12-31",
    strategies: Annotated[str, typer.Option(help="id=package.module:Class, comma-separated")] = (
        "vol_target=qmp_lab.strategies.vol_target:VolatilityTarget"),
    operators: Annotated[str, typer.Option(help="named operators (people), comma-separated: a NATS user each, "
                                                "whose commands the audit trail records by name")] = "",
    no_tls: Annotated[bool, typer.Option("--no-tls", help="plaintext NATS and PostgreSQL: for debugging only "
                                                          "(`qmp audit security` fails on it)")] = False,
    no_warm_spares: Annotated[bool, typer.Option(
        "--no-warm-spares", help="keep no imported spare process per service: about 500 MB less memory, "
                                 "and a crashed service takes seconds longer to come back")] = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="NAME=VALUE",
        help="a service setting, repeatable: any setting `qmp settings` lists (e.g. --set initial_capital=250000 "
             "--set drawdown_halt=0.08); checked by the services before anything starts. QMP_<NAME> variables "
             "in the environment reach the services too")] = None,
    cluster: Annotated[bool, typer.Option(
        "--cluster", help="three nats-servers clustered on loopback, every stream and bucket with three replicas: "
                          "one server may stop without a stream or a message going")] = False,
    dashboard: Annotated[bool, typer.Option(
        "--dashboard", help="serve the dashboard on 127.0.0.1 (port --dashboard-port) while the stack runs")] = False,
    dashboard_port: Annotated[int, typer.Option(help="the dashboard's port")] = 8501,
    capital: Annotated[float | None, typer.Option(min=0.01, help="each strategy's starting capital (the same as "
                                                                  "--set initial_capital=...)")] = None,
    account: Annotated[str, typer.Option(help="with --capital: also add (or set) this account with that capital, "
                                              "audited as `qmp accounts add` is; deploy with --account to trade "
                                              "from it")] = "",
) -> None:
    """Start NATS, PostgreSQL and the four services, with market data flowing; Ctrl-C stops all.

    The embedded servers speak TLS only, with certificates of a CA made for this run (its file is
    `<run>/tls/ca.pem`; every client of the stack verifies the servers against it).
    """
    collector = {"QMP_SOURCE": source, "QMP_REPLAY_RATE": str(rate)}
    clock = "replay"
    if source == "synthetic":
        collector |= {"QMP_VENUE": "synth", "QMP_SYMBOLS": str(symbols), "QMP_BAR_SECONDS": str(bar_seconds)}
    elif source == "history":
        collector |= {"QMP_VENUE": "sp500", "QMP_START": start, "QMP_END": end}
    elif source in ("exchange", "alpaca"):  # a live feed: the whole stack runs on wall time
        clock, collector = "live", {"QMP_SOURCE": source}
    else:
        raise typer.BadParameter(f"source must be synthetic, history, exchange or alpaca, got {source!r}")
    names = tuple(name.strip() for name in operators.split(",") if name.strip())
    try:
        roles_with(names)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    sets = list(set_ or [])
    if account and capital is None:
        raise typer.BadParameter("--account needs --capital: the account's capital")
    if account:
        try:
            subjects.check_token(account, "account")
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None
    if capital is not None:
        if any(item.split("=", 1)[0].replace("-", "_").strip() == "initial_capital" for item in sets):
            raise typer.BadParameter("--capital and --set initial_capital name the same setting: give one")
        sets.append(f"initial_capital={capital:g}")
    service_env = _checked_sets(sets)
    service_env["collector"] = service_env.get("collector", {}) | collector
    service_env["execution"] = service_env.get("execution", {}) | {"QMP_STRATEGIES": strategies}
    options = StackOptions(home=HOME, clock=clock, pass_environment=True, operators=names, tls=not no_tls,
                           warm_spares=not no_warm_spares, metrics=True, service_env=service_env, cluster=cluster)
    stack = Stack(options)
    if no_tls:
        console.print("[bold yellow]TLS is off[/]: NATS and PostgreSQL speak plaintext on loopback. For debugging "
                      "only — never for a stack that trades.")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with console.status("starting NATS" + (" (a cluster of three)" if cluster else "") + " and PostgreSQL…"):
            connection = stack.start_servers()
        for service in options.services:
            with console.status(f"starting {service}…"):
                stack.start_service(service)
                asyncio.run(stack.wait_healthy(service))
            stack.prepare_spare_if_wanted(service)
            console.print(f"[green]✓[/] {service}")
        console.print(f"connection details: {CONNECTION_FILE} (NATS {connection.nats_url}, "
                      f"database {redacted(connection.database_url)})")
        if connection.tls_ca:
            console.print(f"TLS: servers verified against this run's CA, {connection.tls_ca}")
        for name in names:
            console.print(f"operator {name}: `qmp --as {name} <verb>` ({operator_connection_file(HOME, name)})")
        if account and capital is not None:
            venue = service_env.get("execution", {}).get("QMP_BROKER", "paper")
            reply = asyncio.run(send_account_request(connection, account, SetAccount(
                venue=venue, capital=capital, command_id=f"up-{account}-{time.time_ns()}",
                reason="qmp up --account")))
            if not reply.accepted:
                raise typer.BadParameter(f"account {account}: {reply.reason}", param_hint="--account")
            console.print(f"account {account}: {capital:,.2f} USD at {venue} (`qmp deploy <strategy> --account "
                          f"{account}` trades from it)")
        console.print("metrics: " + ", ".join(f"{service} http://127.0.0.1:{port}/metrics"
                                              for service, port in stack.metrics_ports.items())
                      + f" (Prometheus file_sd targets: {stack.run_dir / 'prometheus-targets.json'})")
        console.print(f"logs and traces: {stack.run_dir}  —  Ctrl-C stops everything")
        # A service that dies or fails its health is restarted (with backoff); `qmp status` shows restarts.
        asyncio.run(_supervise(stack, dashboard_port if dashboard else None))
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        with contextlib.suppress(KeyboardInterrupt):  # another Ctrl-C while stopping: the stop finishes first
            stack.stop()
        console.print("stopped")


# Settings `qmp up` sets from its own flags: a --set of one names the flag instead.
UP_FLAGS = {"source": "--source", "venue": "--source", "replay_rate": "--rate", "symbols": "--symbols",
            "bar_seconds": "--bar-seconds", "start": "--start", "end": "--end", "strategies": "--strategies"}


def _checked_sets(pairs: list[str]) -> dict[str, dict[str, str]]:
    """Check `--set NAME=VALUE` with the services themselves; return service → its QMP_* variables."""
    if not pairs:
        return {}
    try:
        sets = parse_sets(pairs)
        with console.status("checking the settings with the services…"):
            reports = read_reports(os.environ | {f"QMP_{name.upper()}": value for name, value in sets.items()})
        return service_sets(sets, reports, UP_FLAGS)
    except SettingsError as error:
        raise typer.BadParameter(str(error), param_hint="--set") from None


@app.command()
def settings(
    service: Annotated[str | None, typer.Argument(help="one service (default: all)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List every setting of the services: its variable, default and the value this environment gives it.

    Each service describes its own settings (`python -m qmp_<service> --settings`). `qmp up --set NAME=VALUE`
    or a `QMP_<NAME>` variable sets one; on a running stack `qmp status` shows the main ones in force.
    """
    services = (service,) if service else ("collector", "risk", "execution", "deployer")
    try:
        with console.status("asking the services…"):
            reports = read_reports(services=services)
    except SettingsError as error:
        _fail(str(error))
    if as_json:
        console.print_json(json.dumps({name: msgspec.to_builtins(report) for name, report in reports.items()}))
        return
    for name, report in reports.items():
        table = Table(title=f"{name} ({report.settings_type})", title_justify="left",
                      caption="each one is the variable QMP_<SETTING>, or `qmp up --set SETTING=VALUE`",
                      caption_justify="left")
        table.add_column("setting", no_wrap=True)
        for column in ("type", "default", "in force"):
            table.add_column(column)
        for info in report.settings:
            shown = "[dim]the stack's own[/]" if info.name in STACK_OWNED else escape(json.dumps(info.value))
            if info.value != info.default and info.name not in STACK_OWNED:
                shown = f"[bold]{shown}[/]"
            table.add_row(info.name, escape(info.type), escape(json.dumps(info.default)), shown)
        console.print(table)
        if report.error:
            console.print(f"[red]{name}: {escape(report.error)}[/]")


@app.command()
def init(
    env: Annotated[str | None, typer.Option(help="tag the database production or test (production stays)")] = None,
    allow_test_data: Annotated[bool, typer.Option(
        "--allow-test-data", help="with --env production: tag a database that holds data anyway")] = False,
    replicas: Annotated[int | None, typer.Option(
        min=1, max=5, help="copies of every stream and bucket across the cluster's servers (default: "
                           "QMP_STREAM_REPLICAS; with --env production, 3 on a cluster)")] = None,
    compression: Annotated[str | None, typer.Option(
        help="none | s2: the streams' compression on disk (default: QMP_STREAM_COMPRESSION; with --env "
             "production, s2)")] = None,
) -> None:
    """Prepare a running NATS and PostgreSQL (`--nats-url`, `--database-url`) for the services.

    Migrates the database and declares every stream and bucket with the limits of QMP_RETENTION_*
    (docs/OPERATIONS.md), and the replicas and compression of QMP_STREAM_* or the flags; the services never
    declare them. Safe to run again: a limit, replica count or compression changed is applied to the existing
    stream. `qmp up` does this itself for its embedded servers.
    `--env production` tags the database production, refusing one that already holds data (a test run's)
    unless `--allow-test-data`; a production database is never cleared by `qmp db clear-test-data`. Its
    streams are compressed (s2) and, on a cluster, kept on three servers, unless the flags say otherwise.
    """
    if env not in (None, "production", "test"):
        raise typer.BadParameter("--env must be production or test")
    if compression not in (None, "none", "s2"):
        raise typer.BadParameter("--compression must be none or s2")
    from qmp_core import bus
    from qmp_core.config import Retention, load_settings

    try:
        retention = load_settings(Retention)
        storage = load_settings(StreamStorage)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None

    async def run() -> StreamStorage:
        from qmp_core.db import migrate

        try:
            await migrate(connection.database_url)
        except OSError as error:
            raise StackUnavailable(f"cannot reach PostgreSQL at {redacted(connection.database_url)} ({error}): "
                                   "name it with --database-url / QMP_DATABASE_URL") from error
        if env is not None:
            from qmp_ops.environment import set_environment

            db = await asyncpg.connect(connection.database_url)
            try:
                await set_environment(db, env, allow_test_data)
            finally:
                await db.close()
        nc = await connection.connect()
        try:
            # The server's INFO names its cluster when it is in one (nats-py keeps it, unexposed).
            clustered = bool(nc._server_info.get("cluster"))
            chosen = _stream_storage(storage, env, replicas, compression, clustered)
            await bus.declare(nc.jetstream(), retention, chosen)
        except nats.js.errors.APIError as error:
            raise typer.BadParameter(f"NATS refused the streams: {error.description} (replicas beyond the "
                                     "cluster's servers? `--replicas` sets them)") from None
        finally:
            await nc.close()
        return chosen

    from qmp_ops.environment import WrongEnvironment

    connection = Connection.read()
    try:
        chosen = asyncio.run(run())
    except WrongEnvironment as error:
        _fail(str(error))
    if env is not None:
        console.print(f"[green]✓[/] database tagged {env}")
    stored = f"{chosen.stream_replicas} replica{'s' if chosen.stream_replicas > 1 else ''}, " \
             f"compression {chosen.stream_compression}"
    for config in bus.streams(retention, chosen):
        console.print(f"[green]✓[/] stream {config.name}: {config.max_age / bus.DAY_S:g} days, "
                      f"{(config.max_bytes or 0) // bus.MB} MB, {stored}")
    for bucket in bus.buckets(retention, chosen):
        console.print(f"[green]✓[/] bucket {bucket.bucket}: {bucket.history} versions per key, "
                      f"{(bucket.max_bytes or 0) // bus.MB} MB, {bucket.replicas} replicas")
    console.print(f"[green]✓[/] database migrated ({redacted(connection.database_url)})")


PRODUCTION_REPLICAS = 3  # a copy on each server of a three-server cluster: one may go


def _stream_storage(storage: StreamStorage, env: str | None, replicas: int | None, compression: str | None,
                    clustered: bool) -> StreamStorage:
    """Return how the streams are stored: the flags, else production's defaults, else QMP_STREAM_*."""
    changes: dict[str, object] = {}
    if env == "production":
        changes["stream_compression"] = "s2"
        if clustered:
            changes["stream_replicas"] = PRODUCTION_REPLICAS
    if replicas is not None:
        changes["stream_replicas"] = replicas
    if compression is not None:
        changes["stream_compression"] = compression
    return msgspec.structs.replace(storage, **changes)


@app.command()
def demo(
    start: Annotated[str, typer.Option(help="replay start date")] = "2007-01-01",
    end: Annotated[str, typer.Option(help="replay end date")] = "2009-12-31",
    reports: Annotated[Path, typer.Option(help="where the report goes")] = Path("reports"),
) -> None:
    """Replay 2007-2009 S&P 500 history through the whole stack and report equity, drawdown, VaR."""
    from qmp_ops.cli.demo import run_demo

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_demo(console, start, end, HOME, reports)
    except KeyboardInterrupt:
        console.print("interrupted: stack stopped")
        raise typer.Exit(130) from None


@app.command()
def paper(
    strategy: Annotated[str, typer.Argument(help="package.module:Class (its id: --id)")],
    duration: Annotated[str, typer.Option(help="how long: 90s, 60m, 2h")] = "60m",
    source: Annotated[str, typer.Option(help="synthetic (a live feed on the wall clock), history (the bundled "
                                             "S&P 500 from --start, paced at --rate days a second), or a venue's "
                                             "live bars: exchange:<ccxt id> or alpaca (with --symbols)")]
    = "synthetic",
    strategy_id: Annotated[str, typer.Option("--id", help="the id it trades under")] = "paper",
    symbols: Annotated[int, typer.Option(min=1, help="synthetic: the universe's size")] = 20,
    bar_seconds: Annotated[float, typer.Option(min=0.05, help="synthetic: a bar every this many seconds")] = 1.0,
    start: Annotated[str, typer.Option(help="history: the first day")] = "2018-01-01",
    rate: Annotated[float, typer.Option(min=0.1, help="history: days a second")] = 5.0,
    pythonpath: Annotated[str, typer.Option(help="where execution finds a strategy outside the installed "
                                                 "packages")] = "",
    capital: Annotated[float, typer.Option(min=0.01, help="the strategy's starting capital")] = 1_000_000.0,
    venue_symbols: Annotated[str, typer.Option("--venue-symbols", help="a venue source: its symbols, "
                                                                       "comma-separated")] = "",
    timeframe: Annotated[str, typer.Option(help="an exchange source: the bar length (ccxt's: 1m, 5m, 1h)")] = "1m",
    venue_url: Annotated[str, typer.Option(help="a venue source: another base URL (a proxy, a fake)")] = "",
    live: Annotated[bool, typer.Option("--live", help="an exchange source: its live API, not its testnet")] = False,
    reports: Annotated[Path, typer.Option(help="where the report goes")] = Path("reports"),
) -> None:
    """Run a strategy in paper for a set time on live-like data, on a stack of its own, and write the session
    report: orders, fills with slippage against the model, equity, drawdown, VaR / ES, breaker events, and the
    closing halt's control latency."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from qmp_ops.cli.monitor import seconds
    from qmp_ops.paper import PaperOptions, run_session, write_report
    from qmp_ops.replay import ReplayFailed

    kind, _, exchange_id = source.partition(":")
    if kind not in ("synthetic", "history", "exchange", "alpaca") or (kind == "exchange") != bool(exchange_id):
        raise typer.BadParameter("--source must be synthetic, history, exchange:<ccxt id> or alpaca")
    names = tuple(s.strip() for s in venue_symbols.split(",") if s.strip())
    if kind in ("exchange", "alpaca") and not names:
        raise typer.BadParameter(f"--source {source} needs --venue-symbols (the venue's own: BTC/USDT, AAPL)")
    try:
        options = PaperOptions(strategy_path=strategy, strategy_id=subjects.check_token(strategy_id, "strategy"),
                               duration_s=seconds(duration), source=kind,  # type: ignore[arg-type]
                               symbols=symbols, bar_seconds=bar_seconds, start=start, rate=rate,
                               pythonpath=pythonpath, capital=capital, venue_symbols=names,
                               exchange_id=exchange_id or "binance", timeframe=timeframe, venue_url=venue_url,
                               live=live)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    signal.signal(signal.SIGTERM, _interrupt)
    columns = (TextColumn("[bold]paper"), BarColumn(), TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("paper", total=options.duration_s, detail="starting the stack…")

            def tick(elapsed: float, seen: Any) -> None:
                equity = seen.snapshots[-1]["equity"] if seen.snapshots else 0.0
                progress.update(task, completed=elapsed, detail=f"{len(seen.snapshots)} snapshots, "
                                f"{seen.accepted} orders, {seen.fills} fills, equity {equity:,.0f}")

            summary, frame = run_session(options, HOME, tick)
    except KeyboardInterrupt:
        console.print("interrupted: stack stopped")
        raise typer.Exit(130) from None
    except ReplayFailed as error:
        console.print(f"[red]qmp paper:[/] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    folder = reports / f"paper-{options.strategy_id}-{time.strftime('%Y%m%dT%H%M%S')}"
    path = write_report(folder, summary, frame)
    console.print(path.read_text(), highlight=False, markup=False)
    console.print(f"report: {path}  (run directory: {summary.run_dir})")


@app.command()
def halt(
    strategy: Annotated[str, typer.Argument(help="strategy id, or ALL")],
    reason: Annotated[str, typer.Option(help="why; recorded in the audit trail")] = "operator halt",
) -> None:
    """Halt a strategy's new orders (latched until `qmp resume`)."""
    _print_reply(asyncio.run(send_control(Connection.read(), strategy, {"command": "halt", "reason": reason})))


@app.command()
def kill(
    strategy: Annotated[str, typer.Argument(help="strategy id, or ALL")],
    flatten: Annotated[bool, typer.Option("--flatten", help="also close every position, with orders that only "
                                                            "reduce it")] = False,
    reason: Annotated[str, typer.Option(help="why; recorded in the audit trail")] = "kill switch",
    timeout: Annotated[float, typer.Option(min=1.0, help="seconds to wait for the venues' answer")] = 30.0,
) -> None:
    """The kill switch: halt, withdraw every working order at the venue now, optionally flatten; wait for
    the venue's confirmation that nothing is left open (exit 1 if it did not come, saying what is left)."""
    reply, reports, silent = asyncio.run(kill_and_report(Connection.read(), strategy, flatten, reason, timeout))
    if not _show_kill(reply, reports, silent, timeout):
        raise typer.Exit(1)


def _show_kill(reply: dict, reports: list, silent: list[str], timeout: float) -> bool:
    """Print a kill's reply and each venue's report; return whether every venue confirmed."""
    console.print_json(json.dumps(reply))
    if not reply.get("accepted"):
        return False
    table = Table(title=f"kill {reply.get('command_id', '')}", title_justify="left")
    for column in ("strategy", "venue", "withdrawn", "closing orders", "still open", "confirmed", "ms"):
        table.add_column(column)
    for report in reports:
        left = ", ".join(report.still_open) or "-"
        table.add_row(report.strategy, report.venue, str(len(report.canceled)), str(len(report.flatten_orders)),
                      escape(left), "[green]yes[/]" if report.confirmed else "[red]no[/]",
                      f"{report.elapsed_ms:.1f}")
    console.print(table)
    for report in reports:
        for error in report.errors:
            console.print(f"[red]{report.strategy}[/]: {escape(error)}")
    for sid in silent:
        console.print(f"[red]{sid}[/]: no report from execution within {timeout:.0f} s (the halt holds; "
                      f"`qmp status` shows its working orders)")
    if not reports and not silent:
        console.print("no execution instance hosts it: the halt is in force, there was nothing to withdraw")
    return not silent and all(report.confirmed for report in reports)


db_app = typer.Typer(help="The stack's database: `qmp db clear-test-data`.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("clear-test-data")
def db_clear_test_data(
    confirm: Annotated[bool, typer.Option("--confirm", help="delete every row of the data tables (required)")] = False,
) -> None:
    """Delete the rows a test run left (bars, fills, books, risk snapshots, audits, dead letters) from a database
    tagged test; a production database (`qmp init --env production`) is refused, whatever the flags."""
    from qmp_ops.environment import WrongEnvironment, clear_test_data

    if not confirm:
        _fail("clear-test-data deletes every row of the data tables: add --confirm to do it")
    connection = Connection.read()

    async def run() -> dict[str, int]:
        db = await asyncpg.connect(connection.database_url)
        try:
            return await clear_test_data(db)
        finally:
            await db.close()

    try:
        deleted = asyncio.run(run())
    except WrongEnvironment as error:
        _fail(str(error))
    console.print(f"[green]✓[/] {sum(deleted.values()):,} rows deleted: "
                  + ", ".join(f"{table} {rows:,}" for table, rows in deleted.items() if rows), highlight=False)


report_app = typer.Typer(help="Reports on the running stack: `qmp report launch`.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("launch")
def report_launch(
    since: Annotated[str | None, typer.Option(help="the window's start, ISO time (UTC unless it says); default: "
                                                   "when the stack's run began")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for launch.md, launch.html, launch.json (default: "
                                                  "reports/launch-<time>)")] = None,
) -> None:
    """The stack against the launch's success criteria: uptime > 99%, error rate < 1%, p99 control response
    < 200 ms, successful trades > 95%, each pass or fail; exit 1 unless all pass."""
    import time as clock
    from datetime import UTC, datetime

    from qmp_core.clock import parse_ns
    from qmp_ops.launch import gather, markdown, write

    connection = Connection.read()
    run_dir = Path(connection.run_dir) if connection.run_dir else None
    if since:
        since_ns = parse_ns(since)
    elif run_dir is not None and (run_dir / "connection.json").exists():
        since_ns = (run_dir / "connection.json").stat().st_mtime_ns  # written as the stack came up
    else:
        _fail("no run directory says when the stack started: pass --since")
    deployer_url = None
    targets = run_dir / "prometheus-targets.json" if run_dir is not None else None
    if targets is not None and targets.exists():
        deployer_url = next((f"http://{t['targets'][0]}/metrics" for t in json.loads(targets.read_text())
                             if t.get("labels", {}).get("service") == "deployer"), None)
    report = asyncio.run(gather(connection, since_ns, clock.time_ns(), deployer_url))
    folder = out or Path("reports") / f"launch-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    paths = write(report, folder)
    console.print(markdown(report), highlight=False)
    console.print("written: " + ", ".join(escape(str(path)) for path in paths), highlight=False)
    if not report.passed:
        raise typer.Exit(1)


@app.command(name="emergency-stop")
def emergency_stop(
    reason: Annotated[str, typer.Option(help="why; recorded in the audit trail")] = "emergency stop",
    no_flatten: Annotated[bool, typer.Option("--no-flatten", help="keep the positions (withdraw the working "
                                                                  "orders only)")] = False,
    timeout: Annotated[float, typer.Option(min=1.0, help="seconds to wait for the venues' answer")] = 30.0,
    out: Annotated[Path | None, typer.Option(help="folder for state.json (default: reports/emergency-<time>)")] = None,
) -> None:
    """Stop all trading now: the kill switch for every strategy (halt, withdraw every working order at its
    venue, close every position unless --no-flatten), wait for the venues' confirmation, then save what holds
    (trading states, rollouts, limits, each strategy's last book) to state.json. Exit 1 if a venue did not
    confirm. After review, `qmp resume <strategy> --safe` trades again at half size."""
    from datetime import UTC, datetime

    from qmp_ops.emergency import state_snapshot

    connection = Connection.read()
    reply, reports, silent = asyncio.run(kill_and_report(connection, "ALL", not no_flatten, reason, timeout))
    confirmed = _show_kill(reply, reports, silent, timeout)
    stamp = datetime.now(UTC)
    folder = out or Path("reports") / f"emergency-{stamp.strftime('%Y%m%dT%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"at": stamp.isoformat(), "reason": reason, "flatten": not no_flatten, "kill": reply,
              "reports": [msgspec.to_builtins(report) for report in reports], "silent": silent,
              "confirmed": confirmed, **asyncio.run(state_snapshot(connection))}
    (folder / "state.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    console.print(f"state saved: {escape(str(folder / 'state.json'))}", highlight=False)
    if not reply.get("accepted") or not confirmed:
        raise typer.Exit(1)


@app.command()
def venues(
    instance: Annotated[str | None, typer.Option(help="one execution instance (QMP_EXECUTION_INSTANCE); default: "
                                                     "every one that answers")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the replies as JSON")] = False,
) -> None:
    """Check the venues execution trades on: for each execution instance, its venue and strategies, whether the
    venue answers and how fast, its cash, equity and buying power, and every position where the books and the
    venue disagree (exit 1 when one does, or when a venue does not answer)."""
    connection = Connection.read()
    try:
        if instance is not None:
            rows = [VenueRow(instance, "", "", {}, {}, asyncio.run(check_venue(connection, instance)))]
        else:
            rows = asyncio.run(check_every_venue(connection))
    except NoBrokerCommands as error:
        _fail(str(error))
    if as_json:
        console.print_json(json.dumps([dataclasses.asdict(row) | {"check": msgspec.to_builtins(row.check)}
                                       for row in rows]))
    elif not rows:
        console.print("no execution instance answered: `qmp status` shows which services run")
    for row in rows if not as_json else []:
        where = escape(row.instance) + (f" ({escape(row.venue)}, {escape(row.phase_env)} phases)" if row.venue else "")
        reply = row.check
        if reply is None:
            console.print(f"{where}: the paper broker, no venue to check", highlight=False)
        elif not reply.accepted:
            console.print(f"[red]✗[/] {where}: {escape(reply.reason)}", highlight=False)
        else:
            account = reply.account
            console.print(f"[green]✓[/] {where}: {escape(reply.broker)} answered in "
                          f"{account.get('latency_ms', 0):.0f} ms: cash {account.get('cash', 0):,.2f}, equity "
                          f"{account.get('equity', 0):,.2f}, buying power {account.get('buying_power', 0):,.2f}",
                          highlight=False)
        for sid, elsewhere in row.strategies.items():
            deployment = f", rollout {row.deployments[sid]}" if row.deployments.get(sid) else ""
            console.print(f"  {escape(sid)}{escape(deployment)}: "
                          + (f"[yellow]not here[/]: {escape(elsewhere)}" if elsewhere else "trades here"),
                          highlight=False)
        if reply is not None and reply.accepted:
            if not reply.differences:
                console.print("  positions: the books and the venue agree")
            for difference in reply.differences:
                console.print(f"  [red]position differs[/] {escape(difference.symbol)}: books "
                              f"{difference.booked:g}, venue {difference.venue:g}", highlight=False)
    if any(row.check is not None and (not row.check.accepted or row.check.differences) for row in rows):
        raise typer.Exit(1)


@app.command()
def trace(
    wanted: Annotated[str, typer.Argument(metavar="ID", help="a trace id, a span id, or an attribute's value "
                                                            "(a control command id, a breaker, ...)")],
    run_dir: Annotated[Path | None, typer.Option(help="the run whose traces to read (default: the running "
                                                      "stack's, else the latest run under .qmp/runs)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many traces, the latest first")] = 5,
) -> None:
    """Show a trace as a tree of spans across the services: when each started, how long it took, where."""
    from qmp_ops.traces import find, render

    directory = (run_dir or _current_run_dir()) / "traces"
    if not directory.is_dir():
        _fail(f"no traces in {directory}: spans are written there by services started with `qmp up` or "
              "`qmp demo` (unless QMP_OTLP_ENDPOINT sends them to a collector)")
    traces, matched = find(directory, wanted, limit)
    if not traces:
        _fail(f"no span in {directory} has the id or an attribute {wanted!r}")
    for line in render(traces):
        console.print(escape(line), highlight=False, soft_wrap=True)
    if matched > len(traces):
        console.print(f"{matched} traces match; the latest {len(traces)} are shown (--limit)")


async def _answering_services(connection: Connection) -> list[str]:
    """The stack's services that answer a health request now (none: it is safe to put rows back)."""
    nc = await connection.connect()
    try:
        health = await service_health(nc, timeout_s=0.5)
    finally:
        await nc.close()
    return [service for service, reply in health.items() if reply.get("status") != "down"]


def _current_run_dir() -> Path:
    run = current_run_dir(HOME)
    if run is None:
        _fail(f"no run under {HOME / 'runs'}: start one with `qmp up` or `qmp demo`, or pass --run-dir")
    return run


@app.command()
def backup(
    out: Annotated[Path | None, typer.Option(help="a new, empty directory for the backup (default: "
                                                  "backups/<time>)")] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="restore it into a scratch database and "
                                                                      "nats-server and compare the counts and "
                                                                      "checksums")] = True,
) -> None:
    """Back up the stack: its database's tables, its streams (market data, orders and fills, risk, the audit
    trail, deployment events, dead letters) and its trading-state, rollout and limits buckets, with a
    manifest of counts and checksums."""
    from datetime import UTC, datetime

    from qmp_ops import backup as backups

    out = out or BACKUPS / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    connection = Connection.read()

    async def run() -> dict:
        nc = await connection.connect()
        try:
            return await backups.backup(nc, connection.database_url, out)
        finally:
            await nc.close()

    try:
        with console.status("backing up the tables and streams"):
            manifest = asyncio.run(run())
        rows = sum(table["rows"] for table in manifest["tables"].values())
        messages = sum(stream["messages"] for stream in manifest["streams"].values())
        keys = sum(len(k) for k in manifest["buckets"].values())
        console.print(f"backed up {len(manifest['tables'])} tables ({rows:,} rows), {len(manifest['streams'])} "
                      f"streams ({messages:,} messages) and {keys} bucket keys to {escape(str(out))}",
                      highlight=False)
        if verify:
            with console.status("restoring it into a scratch database and nats-server"):
                asyncio.run(backups.verify(out, connection.database_url))
            console.print("[green]✓[/] verified: it restores into a scratch database and nats-server with the same "
                          "counts and checksums")
    except backups.BackupError as error:
        _fail(str(error))


@app.command()
def restore(
    directory: Annotated[Path | None, typer.Argument(help="a directory written by `qmp backup`")] = None,
    latest: Annotated[bool, typer.Option("--latest", help=f"the newest backup under {BACKUPS}/")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="replace every table and stream of the stack (required)")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="compare the restored streams' counts and "
                                                                      "checksums with the backup's (the tables' "
                                                                      "always are)")] = True,
) -> None:
    """Put a backup back into the stack: every table's rows and every stream replaced by the backup's,
    compared with its manifest; then show the trading states it held. Refused while a service of the stack
    answers: stop them first (they would write meanwhile)."""
    from qmp_ops import backup as backups

    if directory is None and latest:
        made = sorted(path for path in BACKUPS.glob("*") if (path / "manifest.json").exists())
        if not made:
            _fail(f"no backup under {BACKUPS}/: `qmp backup` writes one there")
        directory = made[-1]
    if directory is None:
        _fail("name the backup's directory, or --latest")
    if not yes:
        _fail("restore replaces every table and stream of the stack with the backup's: add --yes to do it")
    connection = Connection.read()
    running = asyncio.run(_answering_services(connection))
    if running:
        _fail(f"{', '.join(running)} of this stack answer: stop the services before a restore (they would write "
              "over the rows it puts back)")

    async def run() -> dict:
        nc = await connection.connect()
        try:
            return await backups.restore(directory, connection.database_url, nc, verify=verify)
        finally:
            await nc.close()

    try:
        with console.status("restoring the tables and streams"):
            restored = asyncio.run(run())
    except backups.BackupError as error:
        _fail(str(error))
    rows = sum(table["rows"] for table in restored["tables"].values())
    console.print(f"[green]✓[/] restored {len(restored['tables'])} tables ({rows:,} rows, checksums as backed up) "
                  f"from {escape(str(directory))}", highlight=False, soft_wrap=True)
    if restored["streams"]:
        messages = sum(stream["messages"] for stream in restored["streams"].values())
        console.print(f"[green]✓[/] restored {len(restored['streams'])} streams ({messages:,} messages"
                      + (", checksums as backed up)" if verify else ")"))
    for state in backups.held_states(directory):
        console.print(f"at the backup, {escape(state['key'])} was {state['status']} (size "
                      f"{state['size_multiplier']}, safe mode {state['safe_mode']}): {escape(str(state['reason']))} "
                      "— the trading state is not restored; issue it again (`qmp halt ...`) if it still applies",
                      highlight=False, soft_wrap=True)


@app.command()
def resume(
    strategy: Annotated[str, typer.Argument(help="strategy id, or ALL")],
    safe: Annotated[bool, typer.Option("--safe", help="resume at half size until the next clean gate")] = False,
) -> None:
    """Lift a halt (refused while the trading lock holds the strategy: see `qmp unlock`)."""
    held = lock_holding(HOME, strategy)
    if held is not None:
        name, entry = held
        console.print(f"[red]refused[/]: {escape(str(HOME / LOCK_FILE))} has {name!r} locked since "
                      f"{escape(str(entry.get('at', '?')))}: {escape(str(entry.get('reason', '')))}\n"
                      f"after review, lift the lock (recorded in the audit trail): "
                      f"qmp unlock {name} --reason \"what was reviewed\"", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    body = {"command": "resume", "mode": "safe" if safe else "normal"}
    _print_reply(asyncio.run(send_control(Connection.read(), strategy, body)))


@app.command()
def unlock(
    strategy: Annotated[str, typer.Argument(help="strategy id, or ALL")],
    reason: Annotated[str, typer.Option(help="what was reviewed before trading may resume (required)")],
) -> None:
    """Remove a strategy from the trading lock after review; the unlock is recorded in the audit trail."""
    try:
        entry = remove_lock(HOME, strategy, reason)
    except KeyError:
        console.print(f"[red]not locked[/]: {escape(str(HOME / LOCK_FILE))} does not hold {strategy!r}",
                      highlight=False)
        raise typer.Exit(1) from None
    except ValueError as error:
        console.print(f"[red]refused[/]: {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"unlocked {strategy} (locked for: {escape(str(entry.get('reason', '')))}); "
                  f"logged in {escape(str(HOME / LOCK_LOG))}", highlight=False)
    from qmp_ops.emergency import publish_unlock

    try:
        asyncio.run(publish_unlock(Connection.read(), strategy, reason))
    except (OSError, nats.errors.Error, TimeoutError) as error:
        console.print(f"[yellow]audit event not published[/] (no stack reachable: {escape(str(error))}); "
                      "the lock's log keeps the record", highlight=False)
        return
    console.print(f"audit event published on qmp.deploy.{strategy}.events (`qmp history {strategy}` shows it)")


@app.command()
def status(
    watch: Annotated[bool, typer.Option("--watch", help="refresh every second")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show services' health and strategies' trading state."""
    connection = Connection.read()
    if as_json:
        console.print_json(json.dumps(asyncio.run(gather_status(connection))))
        return
    if not watch:
        console.print(_status_tables(asyncio.run(gather_status(connection))))
        return
    watch_screen(console, lambda: _status_tables(asyncio.run(gather_status(connection))))


@app.command()
def contract(
    write: Annotated[Path | None, typer.Option("--write", help="write it to this file (docs/CONTRACT.md)")] = None,
) -> None:
    """Print the bus contract (subjects, messages, JSON Schemas) as Markdown, generated from the code."""
    from qmp_core.contract import render

    text = render()
    if write is None:
        typer.echo(text)
        return
    write.write_text(text)
    console.print(f"wrote {write}")


@app.command("nats-config")
def nats_config(
    write: Annotated[Path | None, typer.Option("--write", help="write it to a file (infra/nats/server.conf)")] = None,
    cluster: Annotated[bool, typer.Option("--cluster", help="a cluster node's config instead (infra/nats/"
                                                            "cluster.conf): routes over verified TLS")] = False,
) -> None:
    """Print the production nats-server config: TLS, a user per role with the role table's permissions."""
    from qmp_ops.runtime.nats_server import render_cluster_config, render_production_config

    text = render_cluster_config() if cluster else render_production_config()
    if write is None:
        typer.echo(text, nl=False)
        return
    write.write_text(text)
    console.print(f"wrote {write}")


@app.command()
def certificates(
    out: Annotated[Path, typer.Option(help="directory to write ca.pem, server.pem and server.key to")],
    host: Annotated[list[str], typer.Option(help="a name or IP address the servers are reached by (repeat)")],
) -> None:
    """Make a CA and one server certificate for NATS and PostgreSQL of a compose stack (QMP_TLS_DIR).

    The CA's private key is never written: to add a host, make a new set and restart the stack. A team
    with its own PKI puts its files under the same names instead.
    """
    from qmp_ops.runtime.certificates import ServerCertificates

    existing = [name for name in ("ca.pem", "server.pem", "server.key") if (out / name).exists()]
    if existing:
        raise typer.BadParameter(f"{out} already holds {', '.join(existing)}: choose another directory or "
                                 "remove them (the stack then needs the new files)")
    made = ServerCertificates.issue(out, hosts=tuple(host))
    console.print(f"wrote {made.ca_file} (clients trust it), {made.cert_file} and {made.key_file} (the servers; "
                  f"valid for {', '.join(host)})")


@app.command()
def credentials(
    env_file: Annotated[Path, typer.Option(help="the compose stack's secrets file")] = Path(".env"),
    template: Annotated[Path, typer.Option(help="made from this when the file is missing")] = Path(".env.example"),
) -> None:
    """Give every empty secret of the compose stack's `.env` a new random password (made from `.env.example`
    when missing; values already there are kept); write it readable by its owner only. Prints the names only."""
    from qmp_ops.credentials import fill_credentials

    try:
        filled = fill_credentials(env_file, template)
    except FileNotFoundError as error:
        raise typer.BadParameter(str(error)) from None
    if filled:
        console.print(f"{env_file}: new {', '.join(filled)} (mode 600; the values are in the file only)")
    else:
        console.print(f"{env_file}: every secret was set already; nothing changed (mode 600)")


async def _supervise(stack: Stack, dashboard_port: int | None = None) -> None:
    """Supervise until Ctrl-C or SIGTERM, then return so the stack stops in order (no half-closed loop); with
    `dashboard_port`, serve the dashboard meanwhile on the loopback."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = None
    if dashboard_port is not None:
        from aiohttp import web

        from qmp_ops.dashboard import create_app

        runner = web.AppRunner(create_app(stack.connection))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", dashboard_port).start()
        console.print(f"dashboard: http://127.0.0.1:{dashboard_port}/ (sign in with an operator's NATS user and "
                      f"password: {CONNECTION_FILE} holds the admin's)")
    try:
        await Supervisor(stack, say=lambda text: console.print(f"[yellow]{text}[/]")).run(until=stop.is_set)
    finally:
        if runner is not None:
            await runner.cleanup()
    console.print("stopping…")


def _interrupt(signum: int, frame: object) -> None:
    """Treat SIGTERM like Ctrl-C so the stack stops in order."""
    raise KeyboardInterrupt


def _status_tables(status: dict) -> Table:
    table = Table(title="QMP status")
    for column in ("what", "status", "detail"):
        table.add_column(column)
    for name, health in status["services"].items():
        state = health.get("status")
        colour = {"ok": "green", "starting": "yellow", "degraded": "yellow"}.get(state, "red")
        detail = health.get("detail", {})
        brief = _brief(detail)
        liveness = detail.get("liveness", {})
        if liveness.get("retrying"):
            brief = f"waiting for {', '.join(liveness['retrying'])}; " + brief
        if liveness.get("dead_loops"):
            brief = f"dead: {liveness['dead_loops']}; " + brief
        record = health.get("supervisor")
        if record and record.get("restarts"):
            brief = f"restarts={record['restarts']} (last: {record['last_exit']}), " + brief
        table.add_row(name, f"[{colour}]{state}[/]", brief)
    for strategy, state in sorted(status["strategies"].items()):
        colour = {"ACTIVE": "green", "REDUCING": "yellow", "HALTED": "red"}[state["status"]]
        detail = (f"allocation {state['allocation']:.2f}, size × {state['size_multiplier']:.2f}, "
                  f"max order {state['max_order_fraction']:.2f}" + (f", {state['reason']}" if state["reason"] else ""))
        table.add_row(f"strategy {strategy}", f"[{colour}]{state['status']}[/]", detail)
    streams = status.get("streams", [])
    if streams:
        total = sum(s["bytes"] for s in streams)
        rates = [s["bytes_per_hour"] for s in streams if s["bytes_per_hour"] is not None]
        full = max(streams, key=lambda s: s["share_of_limit"])
        colour = "green" if full["share_of_limit"] < 0.8 else "yellow"
        table.add_row("disk (streams)", f"[{colour}]{total / MB:,.1f} MB[/]",
                      f"~{sum(rates) / MB:,.1f} MB/hour over what each stream holds; fullest {full['stream']} "
                      f"at {full['share_of_limit']:.0%} of its limit (then its oldest messages go)")
    return table


def _brief(detail: dict) -> str:
    """Return a service's scalar health figures as `key=value` pairs."""
    return ", ".join(f"{key}={value}" for key, value in detail.items() if isinstance(value, str | int | float | bool))


def _print_reply(reply: dict) -> None:
    console.print_json(json.dumps(reply))
    if not reply.get("accepted"):
        raise typer.Exit(1)


# The operator's verbs must start at once (a halt in an emergency): the other commands pull in pandas and
# the Numba kernels, so they are registered only when the command line may need them.
FAST_COMMANDS = frozenset({"up", "init", "demo", "halt", "resume", "unlock", "status", "venues", "limits", "trace",
                           "incident", "alerts", "emergency-stop", "report", "db", "monitor", "backup", "restore",
                           "contract", "nats-config", "certificates"})


def register_extensions() -> None:
    """Add deploy, rollout, history, verify, risk, stress, slippage, audit, import and dashboard to the app."""
    from qmp_ops.cli.audit import app as audit_app
    from qmp_ops.cli.dashboard import dashboard
    from qmp_ops.cli.deploy import register as register_deploy
    from qmp_ops.cli.importer import import_history
    from qmp_ops.cli.portfolio import app as portfolio_app
    from qmp_ops.cli.risk import register as register_risk
    from qmp_ops.cli.slippage import app as slippage_app
    from qmp_ops.cli.verify import register as register_verify

    register_deploy(app)  # deploy, history, rollout <verb>
    app.add_typer(slippage_app, name="slippage")  # slippage calibrate
    register_verify(app)  # verify, sweep
    register_risk(app)  # risk var | report, stress
    app.add_typer(audit_app, name="audit")  # audit security
    app.add_typer(portfolio_app, name="portfolio")  # portfolio optimise, apply
    app.command(name="import")(import_history)  # historical bars from files
    app.command(name="dashboard")(dashboard)  # the live overview in a browser


if next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None) not in FAST_COMMANDS:
    register_extensions()

def main() -> None:
    """The `qmp` command. What goes wrong on the operator's side is one line on stderr and exit 1, never a
    traceback: the line says what is wrong and what to do."""
    try:
        app()
    except StackUnavailable as error:
        _fail(str(error))
    except nats.errors.NoRespondersError:
        _fail("no service answered the request: is the stack fully up? `qmp status` shows which services answer")
    except (nats.errors.TimeoutError, TimeoutError):
        _fail("the stack did not answer in time: `qmp status` shows which services answer")
    except asyncpg.PostgresError as error:
        _fail(f"the database refused the query ({error}): check QMP_DATABASE_URL / .qmp/connection.json")


def _fail(message: str) -> NoReturn:
    typer.echo(f"qmp: {message}", err=True)
    raise SystemExit(1)


if __name__ == "__main__":
    main()

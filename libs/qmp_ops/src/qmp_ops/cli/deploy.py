"""Rollout verbs over the bus: `qmp deploy`, `qmp rollout <verb>`, `qmp rollout status`, `qmp history`.

Every command is a request on `qmp.deploy.<strategy>.cmd` with a fresh command id; state-changing verbs
carry the phase they expect (`--expect`, read from the rollout's state when not given, and printed), so a
repeated promote is refused rather than taking a second step. Status is read from the `qmp_rollouts`
bucket (it works while the deployer is down); history from the `deployment_events` table, or from the
`QMP_DEPLOY` stream when the database cannot be reached.
"""

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import asyncpg
import msgspec
import nats
import typer
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from qmp_core import subjects
from qmp_core.clock import to_datetime
from qmp_core.messages import DeploymentEvent, RolloutState, codec
from qmp_core.rollout_state import is_active, phase_name, soak_remaining
from qmp_lab.verify.gate import check_deployable
from qmp_ops.cli.control import NoBrokerCommands, check_venue
from qmp_ops.cli.screen import watch as watch_screen
from qmp_ops.runtime.supervisor import Connection

REQUEST_TIMEOUT_S = 5.0
LAST_EVENTS = 3
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
console = Console()
rollout_app = typer.Typer(help="Phased rollouts: promote, pause, resume, abort, rollback, halt, status.",
                          no_args_is_help=True)

Strategy = Annotated[str, typer.Argument(help="strategy id")]
Expect = Annotated[str, typer.Option("--expect", help="the phase you expect now (default: the current one)")]
Reason = Annotated[str, typer.Option(help="why; recorded in the audit trail")]


def register(app: typer.Typer) -> None:
    """Add `deploy`, `history` and the `rollout` group to the `qmp` command."""
    app.command()(deploy)
    app.command()(history)
    app.add_typer(rollout_app, name="rollout")


# ---------------------------------------------------------------- bus
async def send_deploy_command(connection: Connection, strategy: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send one deploy command as a request and return the decoded reply."""
    body = {"issued_by": "operator", "command_id": uuid.uuid4().hex, **body}
    nc = await connection.connect()
    try:
        reply = await nc.request(subjects.deploy_commands(strategy), json.dumps(body).encode(),
                                 timeout=REQUEST_TIMEOUT_S)
    except nats.errors.NoRespondersError:
        return {"accepted": False, "reason": "no deployer is answering (is the stack up?)"}
    finally:
        await nc.close()
    return json.loads(reply.data)


async def read_rollouts(connection: Connection, strategy: str | None = None) -> dict[str, RolloutState]:
    """Return the rollout states in the bucket (one strategy's, or all)."""
    nc = await connection.connect()
    decoder = codec(RolloutState)
    try:
        try:
            kv = await nc.jetstream().key_value(subjects.KV_ROLLOUTS)
            keys = [subjects.rollout_key(strategy)] if strategy else await kv.keys()
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.NoKeysError):
            return {}
        states: dict[str, RolloutState] = {}
        prefix = subjects.rollout_key("")
        for key in keys:
            if not key.startswith(prefix):
                continue
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue
            if entry.value:
                try:
                    state = decoder.decode(entry.value)
                except msgspec.DecodeError:  # the deployer reads it as no rollout, and so does the CLI
                    continue
                states[state.strategy] = state
        return states
    finally:
        await nc.close()


async def read_history(connection: Connection, strategy: str, limit: int = 200) -> list[DeploymentEvent]:
    """Return a strategy's deployment events, oldest first: the database's, and the stream's it does not hold.

    The deployer stores its own events; alerts and unlocks are published by the operator side on the same
    stream and exist only there, so the trail is both, merged.
    """
    try:
        stored = await _history_from_database(connection, strategy, limit)
    except (OSError, asyncpg.PostgresError):
        stored = []
    try:
        streamed = await _history_from_stream(connection, strategy, limit)
    except (OSError, nats.errors.Error, TimeoutError):
        streamed = []
    seen = {_event_key(event) for event in stored}
    merged = stored + [event for event in streamed if _event_key(event) not in seen]
    merged.sort(key=lambda event: (event.ts_event, event.seq))
    return merged[-limit:]


def _event_key(event: DeploymentEvent) -> tuple[str, int, str, str]:
    return event.rollout_id, event.seq, event.kind, event.command_id


async def _history_from_database(connection: Connection, strategy: str, limit: int) -> list[DeploymentEvent]:
    database = await asyncpg.connect(connection.database_url, timeout=3)
    try:
        rows = await database.fetch(
            "SELECT * FROM (SELECT * FROM deployment_events WHERE strategy = $1 ORDER BY ts DESC, rollout_id, "
            "seq DESC LIMIT $2) recent ORDER BY ts, seq", strategy, limit)
    finally:
        await database.close()
    return [DeploymentEvent(
        strategy=row["strategy"], rollout_id=row["rollout_id"], seq=row["seq"], kind=row["kind"],
        phase_from=row["phase_from"], phase_to=row["phase_to"], status=row["status"], trigger=row["trigger"],
        issued_by=row["issued_by"], command_id=row["command_id"], allocation_before=row["allocation_before"],
        allocation_after=row["allocation_after"], metrics=json.loads(row["metrics"]),
        thresholds=json.loads(row["thresholds"]), reason=row["reason"], epoch=row["epoch"],
        ts_event=(row["ts"] - EPOCH) // timedelta(microseconds=1) * 1_000,
    ) for row in rows]


async def _history_from_stream(connection: Connection, strategy: str, limit: int) -> list[DeploymentEvent]:
    nc = await connection.connect()
    decoder = codec(DeploymentEvent)
    events: list[DeploymentEvent] = []
    try:
        js = nc.jetstream()
        subject = subjects.deploy_events(strategy)
        info = await js.stream_info(subjects.STREAM_DEPLOY, subjects_filter=subject)
        count = (info.state.subjects or {}).get(subject, 0)
        if count:
            sub = await js.subscribe(subject, ordered_consumer=True,
                                     deliver_policy=nats.js.api.DeliverPolicy.ALL)
            for _ in range(count):
                events.append(decoder.decode((await sub.next_msg(timeout=5)).data))
            await sub.unsubscribe()
    finally:
        await nc.close()
    return events[-limit:]


async def _expected_phase(connection: Connection, strategy: str, expect: str) -> str:
    if expect:
        return expect
    return phase_name((await read_rollouts(connection, strategy)).get(strategy))


SkipVerification = Annotated[bool, typer.Option(
    "--skip-verification", help="start the phase without a passing `qmp verify` (said in the audit trail)")]
ConfirmLive = Annotated[bool, typer.Option(
    "--confirm-live", help="confirm live trading: the rollout's first live phase waits for it (recorded in the "
                           "audit trail); refused unless execution trades at a venue that accepts its credentials")]
Instance = Annotated[str, typer.Option(help="the execution instance whose venue a live phase trades on")]


def _live_venue_gate(instance: str) -> None:
    """Refuse live trading unless execution trades at a venue that answers with its account (credentials
    present and accepted); say which venue and account otherwise."""
    try:
        reply = asyncio.run(check_venue(Connection.read(), instance))
    except NoBrokerCommands as error:
        console.print(f"[red]refused[/]: live trading needs a venue with credentials; {error}")
        raise typer.Exit(1) from None
    except nats.errors.TimeoutError:
        console.print(f"[red]refused[/]: execution instance {instance!r} did not answer its venue check in time")
        raise typer.Exit(1) from None
    if not reply.accepted or reply.broker == "paper":
        console.print(f"[red]refused[/]: live trading needs a venue that accepts execution's credentials; "
                      f"{reply.broker or 'the venue'} answered: {reply.reason or 'no account'}")
        raise typer.Exit(1)
    console.print(f"venue {reply.broker}: account answers (equity {reply.account.get('equity', 0.0):,.0f}, "
                  f"buying power {reply.account.get('buying_power', 0.0):,.0f})")


def _verification_gate(strategy: str, skip: bool) -> str:
    """Refuse unless the strategy's latest verification passed on its current code; return a reason suffix."""
    ok, why = check_deployable(strategy)
    if ok:
        return ""
    if not skip:
        console.print(f"[red]refused[/]: {why}")
        raise typer.Exit(1)
    console.print(f"[yellow]starting without a passing verification[/]: {why}")
    return f" [unverified: {why}]"


def _send(strategy: str, body: dict[str, Any], expect: str | None = None) -> None:
    connection = Connection.read()
    if expect is not None:
        body["expected_phase"] = asyncio.run(_expected_phase(connection, strategy, expect))
        if not expect:
            console.print(f"expecting phase [bold]{body['expected_phase']}[/] (use --expect to pin it)")
    reply = asyncio.run(send_deploy_command(connection, strategy, body))
    rollout = reply.pop("rollout", None)
    console.print_json(json.dumps(reply))
    if rollout:
        state = msgspec.convert(rollout, RolloutState)
        console.print(rollout_table({state.strategy: state}, time.time_ns()))
    if not reply.get("accepted"):
        raise typer.Exit(1)


# ---------------------------------------------------------------- commands
def deploy(
    strategy: Strategy,
    env: Annotated[str, typer.Option(help="paper | live: the phase to start in or move to")] = "",
    allocation: Annotated[float | None, typer.Option(help="the phase's allocation (0..1), overrides the plan")] = None,
    plan: Annotated[str, typer.Option(help="rollout plan name")] = "default",
    manual: Annotated[bool, typer.Option("--manual", help="wait for `qmp rollout promote` between phases")] = False,
    expect: Expect = "",
    reason: Reason = "",
    skip_verification: SkipVerification = False,
    confirm_live: ConfirmLive = False,
    instance: Instance = subjects.DEFAULT_EXECUTION_INSTANCE,
    account: Annotated[str, typer.Option(help="the account the strategy trades from (`qmp accounts list`); its "
                                              "live allocations share the account's capital")] = "",
    budget: Annotated[float | None, typer.Option(min=0.01, help="the strategy's capital within its account "
                                                               "(default: all of it)")] = None,
) -> None:
    """Start a phased rollout (paper → live 10% → 50% → 100%), or move it to the next phase.

    The first live phase waits for `--confirm-live` (given here or to `qmp rollout promote`), which is
    refused unless execution trades at a venue that accepts its credentials."""
    if env not in ("", "paper", "live"):
        raise typer.BadParameter(f"env must be paper or live, got {env!r}")
    reason += _verification_gate(strategy, skip_verification)
    if confirm_live or env == "live":
        _live_venue_gate(instance)
    body: dict[str, Any] = {"verb": "deploy", "plan": plan, "env": env, "auto": not manual, "reason": reason,
                            "confirm_live": confirm_live}
    if allocation is not None:
        body["allocation"] = allocation
    if account:
        body["account"] = account
    if budget is not None:
        body["budget"] = budget
    if expect:
        body["expected_phase"] = expect
    _send(strategy, body)


@rollout_app.command()
def promote(
    strategy: Strategy,
    full: Annotated[bool, typer.Option("--full", help="approve the promotion to 100% (phases still apply)")] = False,
    expect: Expect = "",
    reason: Reason = "",
    skip_verification: SkipVerification = False,
    confirm_live: ConfirmLive = False,
    instance: Instance = subjects.DEFAULT_EXECUTION_INSTANCE,
) -> None:
    """Move one phase on; --full also gives the approval the last promotion waits for, --confirm-live the
    confirmation the first live phase waits for."""
    reason += _verification_gate(strategy, skip_verification)
    if confirm_live:
        _live_venue_gate(instance)
    _send(strategy, {"verb": "promote", "full": full, "reason": reason, "confirm_live": confirm_live}, expect)


@rollout_app.command()
def pause(strategy: Strategy, expect: Expect = "", reason: Reason = "") -> None:
    """Stop the soak clock and promotions (gates keep running)."""
    _send(strategy, {"verb": "pause", "reason": reason}, expect)


@rollout_app.command("resume")
def resume_rollout(
    strategy: Strategy,
    safe: Annotated[bool, typer.Option("--safe", help="half size until the next clean gate evaluation")] = False,
    expect: Expect = "",
    reason: Reason = "",
) -> None:
    """Lift a pause, a halt or a rollback."""
    _send(strategy, {"verb": "resume", "mode": "safe" if safe else "normal", "reason": reason}, expect)


@rollout_app.command()
def rollback(strategy: Strategy, expect: Expect = "", reason: Reason = "") -> None:
    """Halt and go back to the last good phase (or allocation 0)."""
    _send(strategy, {"verb": "rollback", "reason": reason}, expect)


@rollout_app.command("halt")
def halt_rollout(strategy: Strategy, reason: Reason = "operator halt") -> None:
    """Halt the strategy and freeze its rollout (priority; cleared only by resume)."""
    _send(strategy, {"verb": "halt", "reason": reason})


@rollout_app.command()
def abort(strategy: Strategy, reason: Reason = "operator abort") -> None:
    """End the rollout: halt, allocation 0 (priority; never clears itself)."""
    _send(strategy, {"verb": "abort", "reason": reason})


@rollout_app.command()
def status(
    strategy: Annotated[str | None, typer.Argument(help="strategy id (default: all)")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="refresh every second")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show each rollout: phase, step, allocation, soak remaining, gates and the last events."""
    connection = Connection.read()
    if as_json:
        states = asyncio.run(read_rollouts(connection, strategy))
        console.print_json(json.dumps({name: msgspec.to_builtins(state) for name, state in states.items()}))
        return
    if not watch:
        console.print(rollout_table(asyncio.run(read_rollouts(connection, strategy)), time.time_ns()))
        return
    watch_screen(console, lambda: rollout_table(asyncio.run(read_rollouts(connection, strategy)), time.time_ns()))


def history(
    strategy: Strategy,
    limit: Annotated[int, typer.Option(help="most recent events shown")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show a strategy's rollout audit trail: every transition with trigger, metrics, thresholds, who issued it."""
    events = asyncio.run(read_history(Connection.read(), strategy, limit))
    if as_json:
        console.print_json(json.dumps([msgspec.to_builtins(event) for event in events]))
        return
    console.print(history_table(strategy, events))


# ---------------------------------------------------------------- rendering
def rollout_table(states: dict[str, RolloutState], now_ns: int) -> Group | Text:
    """Render rollouts: one summary row each, then each one's gates and last events."""
    if not states:
        # a Table without columns prints nothing at all: say it in words
        return Text("no rollouts yet: start one with `qmp deploy <strategy> --env paper`")
    summary = Table(title="rollouts")
    for column in ("strategy", "status", "phase", "step", "allocation", "soak remaining", "note"):
        summary.add_column(column)
    parts: list[Table] = [summary]
    for name, state in sorted(states.items()):
        colour = {"ROLLED_BACK": "red", "HALTED": "red", "ABORTED": "red", "HOLDING": "yellow",
                  "PAUSED": "yellow", "COMPLETE": "green"}.get(state.status, "cyan")
        summary.add_row(name, f"[{colour}]{state.status}[/]", phase_name(state),
                        f"{state.phase_index + 1}/{len(state.phases)}",
                        f"{state.allocation:.0%}", _soak_text(state), state.hold_reason[:80])
        gates = Table(title=f"{name}: gates")
        for column in ("metric", "level", "value", "warning", "critical", "action", "detail"):
            gates.add_column(column)
        for gate in state.gates:
            level_colour = {"ok": "green", "warning": "yellow", "critical": "red"}.get(gate.level, "magenta")
            gates.add_row(gate.metric, f"[{level_colour}]{gate.level}[/]",
                          "—" if gate.value is None else f"{gate.value:.4g}", f"{gate.warning:g}",
                          f"{gate.critical:g}", gate.action, gate.detail[:60])
        parts.append(gates)
        events = Table(title=f"{name}: last events")
        for column in ("time", "event", "phase", "reason"):
            events.add_column(column)
        for event in state.recent_events[-LAST_EVENTS:]:
            events.add_row(f"{to_datetime(event.ts_event):%Y-%m-%d %H:%M:%S}", event.kind,
                           f"{event.phase_from} → {event.phase_to}", event.reason[:90])
        parts.append(events)
    return Group(*parts)


def history_table(strategy: str, events: list[DeploymentEvent]) -> Table:
    table = Table(title=f"rollout history of {strategy}")
    for column in ("time", "event", "phase", "trigger", "issued by", "command", "allocation", "metrics",
                   "thresholds", "reason"):
        table.add_column(column)
    for event in events:
        metrics = ", ".join(f"{k}={'—' if v is None else f'{v:.4g}'}" for k, v in event.metrics.items())
        thresholds = ", ".join(f"{k} {w:g}/{c:g}" for k, (w, c) in event.thresholds.items())
        table.add_row(f"{to_datetime(event.ts_event):%Y-%m-%d %H:%M:%S}", event.kind,
                      f"{event.phase_from} → {event.phase_to}", event.trigger, event.issued_by, event.command_id[:12],
                      f"{event.allocation_before:.0%} → {event.allocation_after:.0%}", metrics, thresholds,
                      event.reason)
    return table


def _soak_text(state: RolloutState) -> str:
    if not is_active(state) or state.status == "COMPLETE":
        return "—"
    seconds, fills, notional_hours = soak_remaining(state)
    text = f"{seconds / 3600:.1f}h, {fills} fills"
    if state.phases[state.phase_index].min_notional_hours > 0:
        text += f", {notional_hours:,.0f} notional-h"
    return text

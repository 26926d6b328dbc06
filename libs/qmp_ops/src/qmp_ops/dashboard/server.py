"""The dashboard's web server: sign-in, the pages, the overview as JSON, live events, control requests."""

import asyncio
import contextlib
import dataclasses
import html
import json
import logging
import re
import secrets
import time
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import nats
from aiohttp import web
from markdown_it import MarkdownIt

from qmp_core import bus, subjects
from qmp_lab.verify.gate import check_deployable, latest_verification
from qmp_ops.cli.control import send_control, service_health
from qmp_ops.cli.deploy import read_history, read_rollouts, send_deploy_command
from qmp_ops.dashboard.store import Day, overview_records, strategy_records
from qmp_ops.dashboard.views import SHOWN_MEASURE, Days, live_message, overview, strategies_on_bus, strategy_detail
from qmp_ops.incident import NoIncident, Window, reconstruct
from qmp_ops.incident import store as incident_store
from qmp_ops.incident.report import render_html
from qmp_ops.incident.timeline import trace_id_of
from qmp_ops.runtime.supervisor import Connection, StackUnavailable

log = logging.getLogger(__name__)

COOKIE = "qmp_session"
SESSION_S = 12 * 3600.0
CSRF_HEADER = "X-QMP-Request"  # a page of another site cannot set it on a request here
COALESCE_S = 0.25  # books and risk snapshots of one strategy: the latest in each quarter second
HEALTH_EVERY_S = 5.0
FOLLOWED = (subjects.STATE_ALL, "qmp.risk.*.snapshot", "qmp.exec.*.portfolio", "qmp.deploy.*.events",
            subjects.audit_control("*"))
MEASURE = re.compile(r"[a-z0-9_]{1,64}")  # a VaR / ES key, `<method>_<level>[_<h>d]`
REPORT_FILES = {".png": "image/png"}  # what a verification report's page links to, beside its report.md
# The control verbs the page offers, as the contract spells them; anything else is refused here.
COMMANDS = {
    "halt": ("reason",),
    "resume": ("mode",),
    "set_allocation": ("allocation",),
    "reduce_order_size": ("factor",),
    "kill": ("reason", "flatten"),
}
# The rollout verbs the page offers; each carries the phase the person saw, so a rollout that moved meanwhile
# refuses it (the deployer compares), as `qmp rollout <verb> --expect` does.
ROLLOUT_VERBS = ("promote", "pause", "resume", "rollback")
STATIC = resources.files("qmp_ops.dashboard") / "static"


@dataclasses.dataclass
class Session:
    user: str
    connection: Connection  # the person's credentials: every request of theirs goes out under them
    nc: nats.NATS  # their reading connection
    expires: float


STACK = web.AppKey("stack", Connection)
SESSIONS = web.AppKey("sessions", dict[str, Session])


@web.middleware
async def no_caching(request: web.Request, handler: Any) -> web.StreamResponse:
    response = await handler(request)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"  # no page of another site frames the halt button
    return response


def create_app(stack: Connection) -> web.Application:
    """The dashboard of the stack `stack` names (its NATS; the credentials come from each person)."""
    app = web.Application(middlewares=[no_caching])
    app[STACK] = stack
    app[SESSIONS] = {}
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/", index)
    app.router.add_get("/strategy/{strategy}", strategy_page)
    app.router.add_get("/incidents", incidents_page)
    app.router.add_get("/api/incidents", api_incidents)
    app.router.add_get("/incident/{command_id}", incident_page)
    app.router.add_get("/api/strategy/{strategy}", api_strategy)
    app.router.add_get("/verification/{strategy}/", verification_report)
    app.router.add_get("/verification/{strategy}/{name}", verification_file)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/overview", api_overview)
    app.router.add_get("/api/health", api_health)
    app.router.add_get("/api/events", api_events)
    app.router.add_post("/api/control/{strategy}", api_control)
    app.router.add_post("/api/rollout/{strategy}", api_rollout)
    app.on_shutdown.append(_close_sessions)
    return app


async def _close_sessions(app: web.Application) -> None:
    for session in list(app[SESSIONS].values()):
        with contextlib.suppress(Exception):
            await session.nc.close()
    app[SESSIONS].clear()


def _session(request: web.Request) -> Session | None:
    token = request.cookies.get(COOKIE, "")
    session = request.app[SESSIONS].get(token)
    if session is None or session.expires < time.monotonic():
        return None
    return session


def _required(request: web.Request) -> Session:
    session = _session(request)
    if session is None:
        raise web.HTTPUnauthorized(text=json.dumps({"error": "sign in first"}), content_type="application/json")
    return session


def _page(name: str) -> web.Response:
    return web.Response(text=(STATIC / name).read_text(), content_type="text/html")


async def login_page(request: web.Request) -> web.Response:
    return _page("login.html")


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    user, password = str(form.get("user", "")), str(form.get("password", ""))
    if not user or not password:
        raise web.HTTPFound("/login?error=missing")
    connection = dataclasses.replace(request.app[STACK], operator_user=user, operator_password=password)
    try:
        # Checked once first: a connection that follows the server keeps retrying refused credentials.
        await (await connection.connect()).close()
        nc = await connection.connect(follow=True)
    except StackUnavailable as error:
        log.warning("sign-in refused", extra={"user": user, "error": str(error)})
        raise web.HTTPFound("/login?error=refused") from None
    token = secrets.token_urlsafe(32)
    request.app[SESSIONS][token] = Session(user, connection, nc, time.monotonic() + SESSION_S)
    log.info("signed in", extra={"user": user})
    response = web.HTTPFound("/")
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", max_age=int(SESSION_S), path="/")
    raise response


async def logout(request: web.Request) -> web.Response:
    token = request.cookies.get(COOKIE, "")
    session = request.app[SESSIONS].pop(token, None)
    if session is not None:
        await session.nc.close()
    response = web.HTTPFound("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


async def index(request: web.Request) -> web.Response:
    if _session(request) is None:
        raise web.HTTPFound("/login")
    return _page("index.html")


async def strategy_page(request: web.Request) -> web.Response:
    if _session(request) is None:
        raise web.HTTPFound("/login")
    return _page("strategy.html")


async def api_strategy(request: web.Request) -> web.Response:
    """One strategy: its state, full risk snapshot, exposure, orders, fills, curves, rollout trail, audit."""
    session = _required(request)
    strategy = request.match_info["strategy"]
    try:
        subjects.check_token(strategy, "strategy")
    except ValueError as error:
        return web.json_response({"error": str(error)}, status=400)
    measure = request.query.get("measure", SHOWN_MEASURE)
    if not MEASURE.fullmatch(measure):
        return web.json_response({"error": f"not a VaR / ES key: {measure!r}"}, status=400)
    body = await strategy_detail(session.nc, strategy)
    body |= await strategy_records(session.connection.database_url, strategy, measure)
    body["rollout"] = [msgspec.to_builtins(event) for event in await read_history(session.connection, strategy, 100)]
    rollout = (await read_rollouts(session.connection, strategy)).get(strategy)
    body["gates"] = [msgspec.to_builtins(gate) for gate in rollout.gates] if rollout else []
    return web.json_response(body)


async def _records(session: Session, states: dict[str, str]) -> tuple[dict[str, Day], dict[str, str]]:
    """The database's part of the overview (each day's opening equity, who set each state); nothing when the
    database does not answer: the rows from the bus are shown all the same."""
    try:
        return await overview_records(session.connection.database_url, states)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        log.warning("the database did not answer; the overview goes without PnL of the day and senders",
                    extra={"error": str(error)})
        return {}, {}


def _report_folder(request: web.Request) -> Path:
    """The folder of the strategy's latest verification report (the latest run of any of its tests)."""
    _required(request)
    strategy = request.match_info["strategy"]
    try:
        subjects.check_token(strategy, "strategy")
    except ValueError as error:
        raise web.HTTPBadRequest(text=str(error)) from None
    tests = (latest_verification(strategy) or {}).get("tests", {}).values()
    reports = sorted((t for t in tests if t.get("report")), key=lambda t: t.get("verified_at_ns", 0))
    if not reports or not Path(reports[-1]["report"]).is_file():
        raise web.HTTPNotFound(text=f"no verification report of {strategy}")
    return Path(reports[-1]["report"]).parent


async def verification_report(request: web.Request) -> web.Response:
    """The latest `qmp verify` report of the strategy as a page (its charts are served beside it)."""
    folder = _report_folder(request)
    strategy = html.escape(request.match_info["strategy"])
    text = (folder / "report.md").read_text()
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)  # raw HTML in it is escaped
    return web.Response(text=("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>QMP — "
                              f"verification of {strategy}</title><link rel='stylesheet' href='/static/style.css'>"
                              f"</head><body class='report'><p><a href='/strategy/{strategy}'>← {strategy}</a></p>"
                              f"{body}</body></html>"), content_type="text/html")


async def verification_file(request: web.Request) -> web.Response:
    """A chart of the latest verification report: only a file of the report's own folder, by its plain name."""
    folder = _report_folder(request)
    name = request.match_info["name"]
    kind = REPORT_FILES.get(Path(name).suffix)
    if kind is None or name not in {entry.name for entry in folder.iterdir() if entry.is_file()}:
        raise web.HTTPNotFound()
    return web.Response(body=(folder / name).read_bytes(), content_type=kind)


async def incidents_page(request: web.Request) -> web.Response:
    if _session(request) is None:
        raise web.HTTPFound("/login")
    return _page("incidents.html")


async def api_incidents(request: web.Request) -> web.Response:
    """Every command that halted a strategy (halts, kills; breakers' and people's), latest first."""
    session = _required(request)
    db = await asyncpg.connect(session.connection.database_url, timeout=5)
    try:
        found = await incident_store.halts(db)
    finally:
        await db.close()
    return web.json_response({"incidents": [{
        "strategy": row["strategy"], "ts_event": row["ts_event"], "command": row["command"].get("command"),
        "command_id": row["command"].get("command_id", ""), "reason": row["command"].get("reason", ""),
        "sender": row["sender"], "trace_id": trace_id_of(row["state"].get("traceparent", ""))} for row in found]})


async def incident_page(request: web.Request) -> web.Response:
    """The incident review of one halt (`qmp incident --around <command id>`): timeline, the trigger's trace,
    equity / drawdown / VaR around it, every event, as one page."""
    session = _required(request)
    command_id = request.match_info["command_id"]
    traces_dir = Path(session.connection.run_dir) / "traces" if session.connection.run_dir else None
    db = await asyncpg.connect(session.connection.database_url, timeout=5)
    try:
        found = await reconstruct(db, session.nc, None, Window(), command_id, traces_dir)
    except NoIncident as error:
        raise web.HTTPNotFound(text=str(error)) from None
    finally:
        await db.close()
    return web.Response(text=render_html(found), content_type="text/html")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    kinds = {".js": "text/javascript", ".css": "text/css"}
    kind = next((kind for suffix, kind in kinds.items() if name.endswith(suffix)), None)
    resource = STATIC / name
    if kind is None or "/" in name or not resource.is_file():
        raise web.HTTPNotFound()
    return web.Response(text=resource.read_text(), content_type=kind)


async def api_overview(request: web.Request) -> web.Response:
    session = _required(request)
    rollouts = await read_rollouts(session.connection)
    body = await overview(session.nc, rollouts)
    days, senders = await _records(session, {row["strategy"]: row["state"].get("command_id", "")
                                             for row in body["strategies"]})
    for row in body["strategies"]:
        day = days.get(row["strategy"])
        row["day_pnl"] = day.pnl() if day else None
        row["state"]["set_by"] = senders.get(row["strategy"], "")
    body["user"] = session.user
    return web.json_response(body)


async def api_health(request: web.Request) -> web.Response:
    session = _required(request)
    return web.json_response(await service_health(session.nc, timeout_s=0.5))


async def _action(request: web.Request, key: str, allowed: Any) -> tuple[Session, str, dict[str, Any]] | web.Response:
    """A control or rollout request's session, strategy and body, once signed in, sent by the page (the header)
    and naming an action in `allowed` under `key`; else the refusal to answer."""
    session = _required(request)
    if request.headers.get(CSRF_HEADER) != "1":
        raise web.HTTPForbidden(text="a control or rollout request comes from the dashboard's own page")
    strategy = request.match_info["strategy"]
    try:
        subjects.check_token(strategy, "strategy")
        body = await request.json()
        if body.get(key) not in allowed:
            raise ValueError(f"unknown {key} {body.get(key)!r}: one of {sorted(allowed)}")
    except ValueError as error:
        return web.json_response({"accepted": False, "reason": str(error)}, status=400)
    return session, strategy, body


async def api_control(request: web.Request) -> web.Response:
    """Send one control command for the strategy, as the signed-in person; answer the deployer's reply."""
    action = await _action(request, "command", COMMANDS)
    if isinstance(action, web.Response):
        return action
    session, strategy, body = action
    command = body["command"]
    fields = {name: body[name] for name in COMMANDS[command] if name in body}
    reply = await send_control(session.connection, strategy, {"command": command, **fields})
    log.info("control from the dashboard", extra={"user": session.user, "strategy": strategy, "command": command,
                                                  "accepted": reply.get("accepted")})
    return web.json_response(reply)


async def api_rollout(request: web.Request) -> web.Response:
    """Promote, pause, resume or roll back the strategy's rollout, as the signed-in person. A promotion passes
    the same gate as `qmp rollout promote`: the strategy's latest verification passed on its current code."""
    action = await _action(request, "verb", ROLLOUT_VERBS)
    if isinstance(action, web.Response):
        return action
    session, strategy, body = action
    verb = body["verb"]
    if verb == "promote":
        deployable, why = check_deployable(strategy)
        if not deployable:
            return web.json_response({"accepted": False, "reason": f"refused: {why}"})
    command = {"verb": verb, "reason": str(body.get("reason", "")) or f"{verb} from the dashboard",
               "expected_phase": str(body.get("expected_phase", ""))}
    if verb == "resume":
        command["mode"] = "safe" if body.get("mode") == "safe" else "normal"
    reply = await send_deploy_command(session.connection, strategy, command)
    log.info("rollout from the dashboard", extra={"user": session.user, "strategy": strategy, "verb": verb,
                                                  "accepted": reply.get("accepted")})
    return web.json_response(reply)


async def api_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: trading states at once; books and risk snapshots coalesced per strategy; health."""
    session = _required(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    pending: dict[tuple[str, str], dict[str, Any]] = {}
    urgent: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    # Each book adds its strategy's PnL since the day began; each audited command names its sender, which the
    # state it set (published after it) shows.
    states = await bus.read_control_entries(session.nc.jetstream())
    known = await strategies_on_bus(session.nc)
    primed, senders_now = await _records(session, {name: states.effective(name).command_id for name in known})
    days = Days(primed)
    senders = {(name, states.effective(name).command_id): who for name, who in senders_now.items()}

    async def on_message(msg: Any) -> None:
        found = live_message(msg.subject, msg.data)
        if found is None:
            return
        kind, row = found
        if kind == "audit":
            senders[(row["strategy"], row["command_id"])] = row["sender"]
            return
        if kind == "state":
            row["set_by"] = senders.get((row.get("strategy", ""), row.get("command_id", "")), "")
        elif kind == "portfolio":
            row["day_pnl"] = days.on_book(row["strategy"], row["ts_event"], row["equity"])
        if kind in ("state", "deploy"):  # a halt is on screen at once
            urgent.put_nowait((kind, row))
        else:
            pending[(kind, str(row.get("strategy", "")))] = row

    subscriptions = [await session.nc.subscribe(subject, cb=on_message, pending_msgs_limit=-1) for subject in FOLLOWED]

    async def send(kind: str, row: Any) -> None:
        await response.write(f"event: {kind}\ndata: {json.dumps(row)}\n\n".encode())

    next_health = 0.0
    try:
        await session.nc.flush()  # the server has the subscriptions before the page hears the stream is open
        await response.prepare(request)
        while True:
            try:
                kind, row = await asyncio.wait_for(urgent.get(), COALESCE_S)
                await send(kind, row)
                continue
            except TimeoutError:
                pass
            batch, pending = pending, {}
            for (kind, _), row in batch.items():
                await send(kind, row)
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + HEALTH_EVERY_S
                await send("health", await service_health(session.nc, timeout_s=0.5))
    except (ConnectionResetError, asyncio.CancelledError, nats.errors.ConnectionClosedError):  # page or server gone
        pass
    finally:
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
    return response

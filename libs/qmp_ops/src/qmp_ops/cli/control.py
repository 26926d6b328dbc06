"""Operator verbs over the bus: halt, kill, resume, status. Plain JSON requests, as in the README."""

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
import nats

from qmp_core import bus, subjects
from qmp_core.messages import BrokerCommand, BrokerReply, KillReport, codec, encode
from qmp_ops.runtime.supervisor import SERVICES, Connection, read_supervisor_record

REQUEST_TIMEOUT_S = 5.0
ATTEMPTS = 3
RETRY_WAIT_S = 0.5  # between attempts when the deployer answers `retry` (it is starting)


async def send_control(connection: Connection, strategy: str, body: dict[str, Any],
                       timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
    """Send one control command as a request and return the decoded reply.

    A request that gets no reply in time, or a reply saying `retry` (a deployer that is starting), is sent
    again with the same command id, so the deployer applies it once however many times it arrives (the
    retry of a halt is never a second halt). A halt goes to
    halts' own lane, answered ahead of any queue of other requests; where no one answers that lane (a
    deployer that is starting), to the main one.
    """
    body = {"issued_by": "operator", "command_id": uuid.uuid4().hex, **body}
    payload = json.dumps(body).encode()
    urgent = body.get("command") in ("halt", "kill")  # a kill is a halt too
    nc = await connection.connect()
    try:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                subject = subjects.control(strategy, connection.sender, urgent=urgent)
                reply = await nc.request(subject, payload, timeout=timeout_s)
                answer = json.loads(reply.data)
                if answer.get("retry") and attempt < ATTEMPTS:  # a deployer that is starting: ask again
                    await asyncio.sleep(RETRY_WAIT_S * attempt)
                    continue
                return answer
            except nats.errors.NoRespondersError:
                if not urgent and attempt == ATTEMPTS:
                    raise
                urgent = False
            except nats.errors.TimeoutError:
                if attempt == ATTEMPTS:
                    raise
    finally:
        await nc.close()
    raise AssertionError("unreachable")


KILL_TIMEOUT_S = 30.0


async def kill_and_report(connection: Connection, strategy: str, flatten: bool, reason: str,
               timeout_s: float = KILL_TIMEOUT_S) -> tuple[dict[str, Any], list[KillReport], list[str]]:
    """Send a kill and wait for execution's report of each strategy it covers.

    Return the deployer's reply, the reports, and the strategies execution hosts that sent none in time.
    The reports are listened for before the command goes, so none can be missed.
    """
    command_id = uuid.uuid4().hex
    reports: dict[str, KillReport] = {}
    arrived = asyncio.Event()
    decode = codec(KillReport)

    async def on_report(msg: Any) -> None:
        report = decode.decode(msg.data)
        if report.kill_id == command_id:
            reports[report.strategy] = report
            arrived.set()

    nc = await connection.connect()
    try:
        await nc.subscribe(subjects.kill_reports("*" if strategy == subjects.ALL_STRATEGIES else strategy),
                           cb=on_report)
        await nc.flush()
        # Which strategies execution hosts is asked while the kill goes (the replies of every instance are
        # waited for a moment; that wait overlaps the kill's own time).
        asked = asyncio.ensure_future(_hosted_strategies(nc))
        reply = await send_control(connection, strategy, {"command": "kill", "reason": reason, "flatten": flatten,
                                                          "command_id": command_id})
        hosted = await asked
        if not reply.get("accepted"):
            return reply, [], []
        expected = hosted if strategy == subjects.ALL_STRATEGIES else hosted & {strategy}
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not expected <= set(reports):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), left)
        return reply, [reports[s] for s in sorted(reports)], sorted(expected - set(reports))
    finally:
        await nc.close()


OTHER_INSTANCES_S = 0.25  # after the first execution instance answers, how long the others get
NO_RESPONDERS = "503"


async def _hosted_strategies(nc: nats.NATS) -> set[str]:
    """The strategies every execution instance hosts (their health replies say); empty if none answers."""
    return {sid for detail in await execution_health(nc) for sid in detail.get("strategies", {})}


async def execution_health(nc: nats.NATS) -> list[dict[str, Any]]:
    """The health detail of every execution instance that answers; empty if none does.

    Each instance answers the same health subject (one per venue or account), so the request is published
    with an inbox of its own and every reply that comes is read, not only the first.
    """
    replies: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def collect(msg: Any) -> None:
        # The server answers a publish nobody is subscribed to with a "no responders" status (503, no body).
        no_responders = (msg.headers or {}).get("Status") == NO_RESPONDERS
        replies.put_nowait(None if no_responders else msg.data)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    details: list[dict[str, Any]] = []
    try:
        await nc.publish(subjects.health("execution"), b"", reply=inbox)
        timeout = REQUEST_TIMEOUT_S
        while True:
            try:
                data = await asyncio.wait_for(replies.get(), timeout)
            except TimeoutError:
                return details
            if data is None:  # no execution instance runs: nothing to wait for
                return details
            with contextlib.suppress(ValueError, AttributeError):  # an unreadable reply is left out
                detail = json.loads(data).get("detail", {})
                if isinstance(detail, dict):
                    details.append(detail)
            timeout = OTHER_INSTANCES_S
    finally:
        await sub.unsubscribe()


async def service_health(nc: nats.NATS, timeout_s: float = 1.0) -> dict[str, dict[str, Any]]:
    """Each service's health reply; `{"status": "down"}` (with its name) for one that does not answer."""
    health: dict[str, dict[str, Any]] = {}
    for service in SERVICES:
        try:
            reply = await nc.request(subjects.health(service), b"", timeout=timeout_s)
            health[service] = json.loads(reply.data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            health[service] = {"service": service, "status": "down"}
    return health


async def gather_status(connection: Connection) -> dict[str, Any]:
    """Return each service's health and each strategy's effective trading state."""
    nc = await connection.connect()
    try:
        health = await service_health(nc)
        states = await _states(nc)
        disk = [{"stream": u.name, "messages": u.messages, "bytes": u.bytes, "max_bytes": u.max_bytes,
                 "share_of_limit": u.share_of_limit, "bytes_per_hour": u.bytes_per_hour}
                for u in await bus.stream_usage(nc)]
    finally:
        await nc.close()
    # Restarts are known to the `qmp up` that supervises this stack, when it runs on this machine.
    for service, record in read_supervisor_record(connection.run_dir).items():
        if service in health:
            health[service]["supervisor"] = record
    return {"services": health, "strategies": states, "streams": disk}


async def _states(nc: nats.NATS) -> dict[str, dict[str, Any]]:
    """Return each strategy's effective state as the bucket holds it now (the same rule execution enforces)."""
    entries = await bus.read_control_entries(nc.jetstream())
    return {strategy: msgspec.to_builtins(entries.effective(strategy)) for strategy in sorted(entries.strategies())}


class NoBrokerCommands(RuntimeError):
    """Nobody answers broker commands for the instance: execution trades on the paper broker, or is down."""


@dataclass(frozen=True)
class VenueRow:
    """One execution instance as `qmp venues` shows it."""

    instance: str
    venue: str
    phase_env: str  # the rollout phases it trades: paper, live or any
    strategies: dict[str, str]  # strategy -> "" when it trades here now, else why not (its phase is elsewhere)
    deployments: dict[str, str]  # strategy -> the rollout its new orders go out under ("" if none)
    check: BrokerReply | None  # the venue's answer; None on the paper broker, which has no venue to ask


async def check_every_venue(connection: Connection) -> list[VenueRow]:
    """Every execution instance that answers, with its venue's answer."""
    nc = await connection.connect()
    try:
        healths = await execution_health(nc)
    finally:
        await nc.close()
    rows: list[VenueRow] = []
    for health in sorted(healths, key=lambda h: str(h.get("instance", ""))):
        instance = str(health.get("instance") or subjects.DEFAULT_EXECUTION_INSTANCE)
        strategies: dict[str, dict[str, Any]] = health.get("strategies", {})
        reply = None if health.get("broker") == "paper" else await check_venue(connection, instance)
        rows.append(VenueRow(instance, str(health.get("venue") or "?"), str(health.get("phase_env") or "any"),
                             {sid: str(s.get("elsewhere") or "") for sid, s in sorted(strategies.items())},
                             {sid: str(s.get("deployment_id") or "") for sid, s in sorted(strategies.items())},
                             reply))
    return rows


async def check_venue(connection: Connection, instance: str, timeout_s: float = 30.0) -> BrokerReply:
    """Ask execution to check its venue: the account, and the positions where the books and the venue differ."""
    nc = await connection.connect()
    try:
        reply = await nc.request(subjects.broker(instance), encode(BrokerCommand(command="check")), timeout=timeout_s)
    except nats.errors.NoRespondersError:
        raise NoBrokerCommands(
            f"no execution instance {instance!r} answers broker commands: it trades on the paper broker "
            f"(QMP_BROKER=paper), or it is not running (`qmp status`)") from None
    finally:
        await nc.close()
    return codec(BrokerReply).decode(reply.data)

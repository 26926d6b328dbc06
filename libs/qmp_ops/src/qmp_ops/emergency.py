"""The emergency protocols: a running strategy whose verification failed is halted, locked and reported;
and an emergency stop (`qmp emergency-stop`) keeps a snapshot of the state it stopped (`state_snapshot`).

1. halt: a `halt` ControlCommand with the reason, sent as a request on `qmp.control.<strategy>` over the
   running stack's connection (the reply says whether the owner of control state accepted it);
2. lock: `<home>/trading.lock` (JSON, strategy -> reason and time) — the deployment gate refuses a
   locked strategy until someone removes the entry after review;
3. alert: a configured command (`QMP_ALERT_COMMAND`, run with the alert as JSON on stdin) or webhook
   (`QMP_ALERT_WEBHOOK`, a JSON POST); always logged and published as a DeploymentEvent of kind `alert`
   on `qmp.deploy.<strategy>.events` (the audit stream operators watch; `qmp history` shows it).

It also resolves a strategy id to what the running stack hosts under it: the execution service's health
reply gives its pid, and the process environment (`QMP_STRATEGIES`, `QMP_STRATEGY_CONFIG`, `PYTHONPATH`)
gives the import path and config (a local stack: the process must be readable by this user).
"""

import asyncio
import json
import logging
import os
import shlex
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import msgspec
import nats

from qmp_core import subjects
from qmp_core.messages import DeploymentEvent
from qmp_lab.lock import write_lock
from qmp_lab.verify.core import StrategyTarget, VerificationError
from qmp_ops.cli.control import send_control
from qmp_ops.runtime.supervisor import Connection

log = logging.getLogger(__name__)
REQUEST_TIMEOUT_S = 5.0


async def send_halt(connection: Connection, strategy: str, reason: str) -> dict[str, Any]:
    """Request a halt of the strategy over the bus; return the reply (accepted, reason, state)."""
    body = {"command": "halt", "reason": reason, "issued_by": "operator", "command_id": f"verify-{uuid.uuid4().hex}"}
    return await send_control(connection, strategy, body, timeout_s=REQUEST_TIMEOUT_S)


async def publish_alert(connection: Connection, strategy: str, reason: str, report: str = "") -> None:
    """Publish the alert as a DeploymentEvent (kind `alert`, issued by `verify`) on the strategy's deploy events."""
    event = DeploymentEvent(strategy=strategy, rollout_id="verify", seq=0, kind="alert", issued_by="verify",
                            trigger="verification_failed", reason=reason if not report else f"{reason} ({report})",
                            command_id=f"verify-{uuid.uuid4().hex}", ts_event=time.time_ns())
    await publish_event(connection, event)


async def publish_unlock(connection: Connection, strategy: str, reason: str) -> None:
    """Publish an operator's unlock of the trading lock on the strategy's deploy events (the audit trail)."""
    event = DeploymentEvent(strategy=strategy, rollout_id="lock", seq=0, kind="unlocked", issued_by="operator",
                            trigger="trading_lock", reason=reason, command_id=f"unlock-{uuid.uuid4().hex}",
                            ts_event=time.time_ns())
    await publish_event(connection, event)


async def publish_event(connection: Connection, event: DeploymentEvent) -> None:
    """Publish a deployment event that the deployer did not make (alerts, unlocks) on the audit stream."""
    nc = await connection.connect()
    try:
        js = nc.jetstream()
        await js.publish(subjects.deploy_events(event.strategy), msgspec.json.encode(event),
                         headers={"Nats-Msg-Id": event.command_id})
    finally:
        await nc.close()


def alert_failed_verification(strategy: str, reason: str, report: str = "", alert_command: str | None = None,
                              alert_webhook: str | None = None) -> list[str]:
    """Send the alert of a failed verification through the configured command and webhook; say what happened.

    Options given on the command line win over QMP_ALERT_COMMAND / QMP_ALERT_WEBHOOK.
    """
    alert = {"kind": "alert", "source": "qmp verify", "strategy": strategy, "reason": reason, "report": report,
             "ts": time.time_ns()}
    command = alert_command if alert_command is not None else os.environ.get("QMP_ALERT_COMMAND", "")
    webhook = alert_webhook if alert_webhook is not None else os.environ.get("QMP_ALERT_WEBHOOK", "")
    return run_alert_hooks(alert, command, webhook)


def run_alert_hooks(alert: dict[str, Any], command: str = "", webhook: str = "") -> list[str]:
    """Run the configured alert command and/or webhook; return what happened, one line each."""
    done: list[str] = []
    payload = json.dumps(alert).encode()
    if command:
        completed = subprocess.run(shlex.split(command), input=payload, capture_output=True, timeout=30,
                                   check=False)
        done.append(f"alert command exited {completed.returncode}")
    if webhook:
        request = urllib.request.Request(webhook, data=payload, headers={"Content-Type": "application/json"},
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                done.append(f"webhook answered {response.status}")
        except OSError as error:
            done.append(f"webhook failed: {error}")
    return done


def emergency_halt(strategy: str, reason: str, home: Path, connection: Connection | None, report: str = "",
                   alert_command: str | None = None, alert_webhook: str | None = None) -> dict[str, Any]:
    """Halt the strategy over the bus, lock it, raise the alert; return what each step did.

    Every step runs even if an earlier one fails (a stack that is down must still get the lock and the alert).
    """
    outcome: dict[str, Any] = {"strategy": strategy, "reason": reason}
    if connection is not None:
        try:
            outcome["halt"] = asyncio.run(send_halt(connection, strategy, reason))
        except (OSError, nats.errors.Error, TimeoutError) as error:
            outcome["halt"] = {"accepted": False, "reason": f"could not reach the stack: {error}"}
    else:
        outcome["halt"] = {"accepted": False, "reason": "no running stack to halt"}
    outcome["lock"] = str(write_lock(home, strategy, reason, report))
    log.error("verification failed, strategy %s halted and locked: %s", strategy, reason)
    outcome["alert"] = alert_failed_verification(strategy, reason, report, alert_command, alert_webhook)
    if connection is not None:
        try:
            asyncio.run(publish_alert(connection, strategy, reason, report))
            outcome["alert"].append("alert event published")
        except (OSError, nats.errors.Error, TimeoutError) as error:
            outcome["alert"].append(f"alert event not published: {error}")
    return outcome


# ---------------------------------------------------------------- strategy ids of a running stack
async def _execution_health(connection: Connection) -> dict[str, Any]:
    nc = await connection.connect()
    try:
        reply = await nc.request(subjects.health("execution"), b"", timeout=REQUEST_TIMEOUT_S)
        return json.loads(reply.data)
    finally:
        await nc.close()


def resolve_running_strategy(strategy_id: str, connection: Connection) -> StrategyTarget:
    """Return the import path and config that the running execution service hosts under strategy_id."""
    try:
        health = asyncio.run(_execution_health(connection))
    except (OSError, nats.errors.Error, TimeoutError) as error:
        raise VerificationError(f"cannot reach the execution service at {connection.nats_url}: {error}") from error
    hosted = health.get("detail", {}).get("strategies", {})
    if isinstance(hosted, dict) and hosted and strategy_id not in hosted:
        raise VerificationError(f"the running stack hosts {sorted(hosted)}, not {strategy_id!r}")
    environ = _process_environment(int(health.get("pid", 0)))
    spec = environ.get("QMP_STRATEGIES", "")
    paths = dict(item.strip().split("=", 1) for item in spec.split(",") if "=" in item)
    if strategy_id not in paths:
        raise VerificationError(f"execution (pid {health.get('pid')}) hosts {sorted(paths)} per QMP_STRATEGIES, "
                                f"not {strategy_id!r}; pass the import path instead")
    configs = json.loads(environ.get("QMP_STRATEGY_CONFIG", "") or "{}")
    return StrategyTarget(paths[strategy_id].strip(), configs.get(strategy_id), strategy_id=strategy_id,
                          pythonpath=environ.get("PYTHONPATH", ""))


def _process_environment(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError as error:
        raise VerificationError(f"cannot read the environment of execution (pid {pid}): {error}; "
                                f"pass the strategy's import path instead") from error
    pairs = (item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
    return dict(pairs)


async def state_snapshot(connection: Connection) -> dict[str, Any]:
    """What holds now: every entry of the buckets (trading states, rollouts, pre-trade limits) and each
    strategy's last book (its latest PortfolioSnapshot on the execution stream)."""
    from qmp_ops.backup import export_buckets

    nc = await connection.connect()
    try:
        buckets = {bucket: {key: json.loads(value) for key, value in entries.items()}
                   for bucket, entries in (await export_buckets(nc)).items()}
        js = nc.jetstream()
        info = await js.stream_info(subjects.STREAM_EXEC, subjects_filter=subjects.PORTFOLIO_ALL)
        books: dict[str, Any] = {}
        for subject in sorted(info.state.subjects or {}):
            stored = await js.get_last_msg(subjects.STREAM_EXEC, subject)
            books[subjects.strategy_of(subject, 2)] = json.loads(stored.data or b"{}")
    finally:
        await nc.close()
    return {"buckets": buckets, "books": books}

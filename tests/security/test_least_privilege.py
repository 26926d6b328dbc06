"""The attacks of issue 13, each tried with a service's own credentials against a real nats-server that
runs with the permissions `qmp up` generates (`qmp_ops.runtime.roles`, exact consumer names).

Every attempt must be refused by the server (a permissions violation naming the subject), and the
admin must find nothing changed afterwards.
"""

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from qmp_core import bus, subjects
from qmp_ops.runtime.nats_server import EmbeddedNats, render_production_config
from qmp_ops.runtime.roles import ROLES, jetstream_grants
from qmp_ops.security import REFUSAL_WAIT_S, attempt_refused

pytestmark = [pytest.mark.integration, pytest.mark.security]

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("collector", "risk", "execution", "deployer")
DURABLES = [(stream, name, filter_) for stream, name, filter_ in (
    (subjects.STREAM_MARKET_DATA, "risk-bars", subjects.MARKET_DATA_BARS_ALL),
    (subjects.STREAM_EXEC, "risk-portfolio", subjects.PORTFOLIO_ALL),
    (subjects.STREAM_MARKET_DATA, subjects.CONSUMER_EXECUTION_BARS, subjects.MARKET_DATA_BARS_ALL),
    (subjects.STREAM_RISK, subjects.CONSUMER_EXECUTION_STOP_LOSS, "qmp.risk.*.stoploss"),
    (subjects.STREAM_INGEST, subjects.CONSUMER_COLLECTOR_INGEST, subjects.INGEST_ALL),
)]


@dataclass
class Stack:
    server: EmbeddedNats
    admin: Client
    connections: dict[str, Client] = field(default_factory=dict)
    violations: dict[str, list[str]] = field(default_factory=dict)

    async def connect(self, user: str) -> Client:
        violations = self.violations.setdefault(user, [])

        async def on_error(error: Exception) -> None:
            violations.append(str(error))

        nc = await self.server.credentials.connect(user,
                                error_cb=on_error, max_reconnect_attempts=1)
        self.connections[user] = nc
        return nc

    async def refused(self, user: str, subject: str, attempt: Callable[[], Awaitable[object]]) -> None:
        """Run `attempt`; assert the server refused `subject` to `user` and nothing answered."""
        was_refused, answer = await attempt_refused(self.violations[user], subject, attempt())
        data = getattr(answer, "data", None)
        if data is not None:  # an API reply: it must be an error
            assert b'"error"' in data, f"{user} was answered on {subject}: {data[:200]!r}"
        assert was_refused, (f"{user} on {subject}: no permissions violation (answer {answer!r}, errors "
                             f"{self.violations[user][-3:]!r})")


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    server = EmbeddedNats(Path(tmp_path_factory.mktemp("security")) / "nats")
    await asyncio.to_thread(server.start)
    admin = await server.credentials.connect("operator")
    js = admin.jetstream()
    await bus.declare(js)
    for stream, name, filter_ in DURABLES:
        await js.add_consumer(stream, ConsumerConfig(durable_name=name, filter_subject=filter_,
                                                     ack_policy=AckPolicy.EXPLICIT, ack_wait=4.0))
    secured = Stack(server, admin)
    for service in SERVICES:
        await secured.connect(service)
    yield secured
    for nc in secured.connections.values():
        await nc.close()
    await admin.close()
    server.stop()


def api(nc: Client, subject: str, body: dict | None = None) -> Callable[[], Awaitable[object]]:
    return lambda: nc.request(subject, json.dumps(body or {}).encode(), timeout=REFUSAL_WAIT_S)


@pytest.mark.parametrize("service", SERVICES)
async def test_security_when_a_service_adds_a_republish_rule_to_a_stream_then_refused_and_unchanged(
        stack: Stack, service: str) -> None:
    config = (await stack.admin.jetstream().stream_info(subjects.STREAM_EXEC)).config
    changed = {**config.as_dict(), "republish": {"src": "qmp.exec.smuggle.>", "dest": "qmp.control.vol_target"}}
    subject = f"$JS.API.STREAM.UPDATE.{subjects.STREAM_EXEC}"

    await stack.refused(service, subject, api(stack.connections[service], subject, changed))

    assert (await stack.admin.jetstream().stream_info(subjects.STREAM_EXEC)).config.republish is None


@pytest.mark.parametrize("service", SERVICES)
async def test_security_when_a_service_creates_a_stream_on_control_subjects_then_refused(
        stack: Stack, service: str) -> None:
    subject = "$JS.API.STREAM.CREATE.SMUGGLE"

    await stack.refused(service, subject, api(stack.connections[service], subject,
                                              {"name": "SMUGGLE", "subjects": ["qmp.control.>"]}))

    names = {info.config.name for info in await stack.admin.jetstream().streams_info()}
    assert "SMUGGLE" not in names


@pytest.mark.parametrize("service", SERVICES)
async def test_security_when_a_service_shortens_the_control_bucket_s_age_then_refused_and_unchanged(
        stack: Stack, service: str) -> None:
    name = f"KV_{subjects.KV_CONTROL}"
    config = (await stack.admin.jetstream().stream_info(name)).config
    subject = f"$JS.API.STREAM.UPDATE.{name}"

    await stack.refused(service, subject, api(stack.connections[service], subject, {**config.as_dict(),
                                                                                    "max_age": 1_000_000_000}))

    assert (await stack.admin.jetstream().stream_info(name)).config.max_age in (None, 0, 0.0)


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("verb", ["DELETE", "PURGE"])
async def test_security_when_a_service_deletes_or_purges_a_stream_then_refused(
        stack: Stack, service: str, verb: str) -> None:
    subject = f"$JS.API.STREAM.{verb}.{subjects.STREAM_AUDIT}"

    await stack.refused(service, subject, api(stack.connections[service], subject))

    assert (await stack.admin.jetstream().stream_info(subjects.STREAM_AUDIT)).config.name == subjects.STREAM_AUDIT


@pytest.mark.parametrize("service", ["collector", "execution", "deployer"])
async def test_security_when_another_service_deletes_changes_or_drains_risk_s_consumer_then_refused(
        stack: Stack, service: str) -> None:
    nc, stream = stack.connections[service], subjects.STREAM_MARKET_DATA
    delete = f"$JS.API.CONSUMER.DELETE.{stream}.risk-bars"
    change = {"stream_name": stream, "config": {"name": "risk-bars", "durable_name": "risk-bars",
                                                "filter_subject": subjects.MARKET_DATA_BARS_ALL,
                                                "ack_policy": "explicit", "ack_wait": 999_000_000_000}}
    legacy = f"$JS.API.CONSUMER.CREATE.{stream}"
    named = f"$JS.API.CONSUMER.CREATE.{stream}.risk-bars.{subjects.MARKET_DATA_BARS_ALL}"
    pull = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.risk-bars"

    await stack.refused(service, delete, api(nc, delete))
    await stack.refused(service, legacy, api(nc, legacy, {**change, "config": {
        k: v for k, v in change["config"].items() if k != "durable_name"}}))  # the form that updated it by name
    await stack.refused(service, named, api(nc, named, change))
    await stack.refused(service, pull, api(nc, pull, {"batch": 1, "expires": 100_000_000}))

    info = await stack.admin.jetstream().consumer_info(stream, "risk-bars")
    assert info.config.ack_wait == 4.0 and info.num_pending == 0 and info.num_ack_pending == 0


@pytest.mark.parametrize("service", ["collector", "execution"])
async def test_security_when_a_service_without_control_rights_publishes_a_halt_or_writes_the_bucket_then_refused(
        stack: Stack, service: str) -> None:
    nc = stack.connections[service]
    halt = json.dumps({"command": "halt", "reason": "smuggled"}).encode()
    control = subjects.control("vol_target", service)
    kv_subject = f"$KV.{subjects.KV_CONTROL}.{subjects.control_key('vol_target', 'operator')}"

    await stack.refused(service, control, lambda: nc.request(control, halt, timeout=REFUSAL_WAIT_S))
    await stack.refused(service, kv_subject, lambda: nc.request(kv_subject, halt, timeout=REFUSAL_WAIT_S))


@pytest.mark.parametrize(("sender", "as_", "urgent"), [
    ("risk", "operator", False), ("operator", "risk", False), ("deployer", "operator", False),
    ("risk", "deployer", False), ("risk", "operator", True), ("execution", "risk", True)])
async def test_security_when_one_identity_sends_control_under_another_s_name_then_refused(
        stack: Stack, sender: str, as_: str, urgent: bool) -> None:
    # urgent: halts' own lane, qmp.control.<sender>.<strategy>.urgent, is bound to the sender the same way
    nc = stack.connections.get(sender) or await stack.connect(sender)
    subject = subjects.control("vol_target", as_, urgent=urgent)

    await stack.refused(sender, subject, lambda: nc.request(subject, b'{"command": "halt"}',
                                                            timeout=REFUSAL_WAIT_S))


async def test_security_when_execution_points_a_consumer_s_delivery_at_control_then_nothing_is_delivered(
        stack: Stack) -> None:
    # execution may open consumers on the risk stream (its risk watch); a push consumer there that
    # delivers to a control subject would turn stored messages into control requests.
    risk_js = stack.connections["risk"].jetstream()
    await risk_js.publish(subjects.snapshot("smuggle"), b'{"command": "halt", "reason": "via a consumer"}')
    received: list[bytes] = []

    async def on_control(msg: nats.aio.msg.Msg) -> None:
        received.append(msg.data)

    watcher = await stack.admin.subscribe("qmp.control.>", cb=on_control)
    await stack.admin.flush()
    request = {"stream_name": subjects.STREAM_RISK, "config": {
        "deliver_subject": subjects.control("ALL"), "ack_policy": "none", "deliver_policy": "all",
        "filter_subject": subjects.snapshot("smuggle")}}
    try:
        await stack.connections["execution"].request(f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_RISK}",
                                                     json.dumps(request).encode(), timeout=2)
        await asyncio.sleep(1.0)
    finally:
        await watcher.unsubscribe()
    assert received == []


def test_grants_when_rendered_then_no_service_holds_the_whole_api_and_none_opens_consumers_where_others_consume(
) -> None:
    for name, role in ROLES.items():
        if role.admin:
            continue
        grants = jetstream_grants(role)
        assert not [g for g in grants if g.startswith("$JS.API.>") or g == "$JS.>" or g == ">"], name
        assert not [g for g in grants if ".DELETE." in g or ".PURGE." in g or "STREAM.UPDATE" in g
                    or "STREAM.CREATE" in g], name
        assert not [g for g in role.publish if g.startswith("$")], name  # API grants only via jetstream_grants


def test_production_nats_config_when_compared_with_the_role_table_then_generated_from_it() -> None:
    committed = (ROOT / "infra" / "nats" / "server.conf").read_text()
    assert committed == render_production_config(), "run `qmp nats-config --write infra/nats/server.conf`"
    for user in ROLES:
        assert f"password: $QMP_{user.upper()}_PASSWORD" in committed


def test_compose_when_read_then_every_secret_required_and_every_port_on_loopback() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    secrets = re.findall(r"\$\{([A-Z_]*PASSWORD)([^}]*)\}", compose)
    assert secrets and all(rest.startswith(":?") for _, rest in secrets), secrets
    ports = re.findall(r'"(\S+:\d+:\d+|\d+:\d+)"', compose)
    assert ports and all(port.startswith("127.0.0.1:") or port.startswith("${") for port in ports), ports
    # The monitoring port has no authentication: never published; NATS' health check asks it on the loopback.
    assert not any("8222" in port for port in ports)
    assert "http://127.0.0.1:8222/healthz" in compose

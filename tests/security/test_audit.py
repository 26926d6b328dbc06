"""`qmp audit security` passes on what the project ships and names what a weakened deployment gets wrong."""

import asyncio
import json
import secrets
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qmp_ops.cli.main import app
from qmp_ops.runtime.nats_server import nats_server_binary
from qmp_ops.runtime.ports import free_port, wait_for_port, write_private
from qmp_ops.runtime.supervisor import Connection, Stack, StackOptions
from qmp_ops.security import audit, audit_compose, audit_nats_config, audit_permissions

pytestmark = pytest.mark.security
ROOT = Path(__file__).resolve().parents[2]


def test_audit_when_the_shipped_files_are_checked_then_no_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)

    result = CliRunner().invoke(app, ["audit", "security", "--files-only"])

    assert result.exit_code == 0, result.output
    assert "no finding" in result.output and "docker-compose.yml" in result.output


def test_audit_when_compose_and_nats_config_are_weakened_then_each_finding_is_named(tmp_path: Path) -> None:
    compose = tmp_path / "docker-compose.yml"
    compose.write_text((ROOT / "docker-compose.yml").read_text()
                       .replace("${QMP_RISK_PASSWORD:?set QMP_RISK_PASSWORD in .env}", "${QMP_RISK_PASSWORD}")
                       .replace('"${QMP_BIND:-127.0.0.1}:4222:4222"', '"4222:4222", "8222:8222"'))
    config = tmp_path / "server.conf"
    config.write_text((ROOT / "infra" / "nats" / "server.conf").read_text()
                      .replace("password: $QMP_RISK_PASSWORD", "password: hunter2hunter2"))

    findings = {(f.check, f.detail) for f in audit_compose(compose) + audit_nats_config(config)}

    checks = {check for check, _ in findings}
    assert {"compose.secrets", "compose.ports", "compose.monitoring", "nats.config"} <= checks
    assert any("QMP_RISK_PASSWORD may be empty" in detail for _, detail in findings)
    assert any("literal password" in detail for _, detail in findings)
    assert any("port 4222:4222" in detail for _, detail in findings)


@pytest.mark.integration
def test_audit_when_a_fresh_stack_is_probed_then_every_permission_holds_and_only_tls_is_reported(
        tmp_path: Path) -> None:
    stack = Stack(StackOptions(home=tmp_path / ".qmp", services=(), share_connection=False))
    try:
        connection = stack.start_servers()
        checked, findings = asyncio.run(audit(connection, None, None, {}))
    finally:
        stack.stop()

    assert "permissions of every service (probes)" in checked
    assert [f for f in findings if not f.check.startswith("tls.")] == []
    assert {f.check for f in findings} == {"tls.nats", "tls.postgres"}  # TLS is still to come (issue 13)


@pytest.mark.integration
def test_audit_when_a_service_holds_the_whole_jetstream_api_then_each_attack_it_could_make_is_named(
        tmp_path: Path) -> None:
    # The grant every service had before the role table: the whole JetStream API and any subject.
    port, password = free_port(), secrets.token_urlsafe(12)
    config = tmp_path / "weak.conf"
    users = [{"user": "execution", "password": password, "permissions": {"publish": {"allow": [">"]},
                                                                          "subscribe": {"allow": [">"]}}}]
    write_private(config, f"listen: 127.0.0.1:{port}\njetstream {{ store_dir: {json.dumps(str(tmp_path / 'js'))} }}\n"
                          f"accounts {{ QMP {{ jetstream: enabled, users: {json.dumps(users)} }} }}\n")
    server = subprocess.Popen([nats_server_binary(), "-c", str(config)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        assert wait_for_port(port, 10)
        connection = Connection(f"nats://127.0.0.1:{port}", "", str(tmp_path))
        findings = asyncio.run(audit_permissions(connection, {"execution": password}))
    finally:
        server.terminate()
        server.wait(10)

    mine = [f.detail for f in findings if f.check == "permissions.execution"]
    assert any(detail.startswith("may create a stream") for detail in mine)
    assert any(detail.startswith("may delete another service's consumer (risk-bars)") for detail in mine)
    assert any(detail.startswith("may send control as operator") for detail in mine)
    assert {f.check for f in findings} >= {"permissions.execution", "permissions.risk"}  # risk: no password

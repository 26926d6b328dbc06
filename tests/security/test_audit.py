"""`qmp audit security` passes on what the project ships and names what a weakened deployment gets wrong."""

import asyncio
import json
import secrets
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qmp_ops.cli.main import app
from qmp_ops.runtime.nats_server import EmbeddedNats, nats_server_binary
from qmp_ops.runtime.ports import free_port, wait_for_port, write_private
from qmp_ops.runtime.postgres_server import EmbeddedPostgres
from qmp_ops.runtime.supervisor import Connection, Stack, StackOptions
from qmp_ops.security import (
    audit,
    audit_compose,
    audit_default_passwords,
    audit_nats_config,
    audit_permissions,
    nats_requires_tls,
    postgres_accepts_plaintext,
)

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
                       .replace('"${QMP_BIND:-127.0.0.1}:4222:4222"', '"4222:4222", "8222:8222"')
                       .replace("tls://nats:4222", "nats://nats:4222").replace("sslmode=verify-full", "sslmode=prefer"))
    (tmp_path / "Dockerfile").write_text((ROOT / "Dockerfile").read_text().replace("USER qmp", "USER root"))
    config = tmp_path / "server.conf"
    config.write_text((ROOT / "infra" / "nats" / "server.conf").read_text()
                      .replace("password: $QMP_RISK_PASSWORD", "password: hunter2hunter2"))

    findings = {(f.check, f.detail) for f in audit_compose(compose) + audit_nats_config(config)}

    checks = {check for check, _ in findings}
    assert {"compose.secrets", "compose.ports", "compose.monitoring", "compose.tls", "image.root",
            "nats.config"} <= checks
    assert any("nats://nats:4222 without TLS" in detail for _, detail in findings)
    assert any("does not verify PostgreSQL's certificate" in detail for _, detail in findings)
    assert any("QMP_RISK_PASSWORD may be empty" in detail for _, detail in findings)
    assert any("literal password" in detail for _, detail in findings)
    assert any("port 4222:4222" in detail for _, detail in findings)


@pytest.mark.integration
def test_audit_when_a_fresh_stack_is_probed_then_no_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the CLI reads ./.qmp/connection.json, as after `qmp up`
    stack = Stack(StackOptions(home=Path(".qmp"), services=()))
    try:
        stack.start_servers()
        result = CliRunner().invoke(app, ["audit", "security"])
    finally:
        stack.stop()

    assert result.exit_code == 0, result.output
    assert "permissions of every service (probes)" in result.output and "transport (TLS)" in result.output
    assert "no finding" in result.output


@pytest.mark.integration
def test_audit_when_the_stack_runs_without_tls_then_both_transports_are_named_and_it_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    stack = Stack(StackOptions(home=Path(".qmp"), services=(), tls=False))  # `qmp up --no-tls`
    try:
        connection = stack.start_servers()
        result = CliRunner().invoke(app, ["audit", "security"], terminal_width=200)
        _checked, findings = asyncio.run(audit(connection, None, None, {}))
    finally:
        stack.stop()

    assert result.exit_code == 1
    assert "tls.nats" in result.output and "tls.postgres" in result.output
    assert {f.check for f in findings} == {"tls.nats", "tls.postgres"}  # the permissions still hold


@pytest.mark.integration
async def test_transport_probes_when_servers_speak_plaintext_too_then_told_apart_from_tls_only(
        nats_credentials, database_url: str, tmp_path: Path) -> None:
    # the probes behind "also accepts plaintext": against the session's TLS servers and plaintext ones
    plain_nats = EmbeddedNats(tmp_path / "nats", tls=False)
    plain_postgres = EmbeddedPostgres(tmp_path / "postgres", tls=False)
    await asyncio.to_thread(plain_nats.start)
    plain_url = await asyncio.to_thread(plain_postgres.start)
    try:
        assert await nats_requires_tls(nats_credentials.url)
        assert not await nats_requires_tls(plain_nats.credentials.url)
        assert not await postgres_accepts_plaintext(database_url)
        assert await postgres_accepts_plaintext(plain_url)
    finally:
        await asyncio.to_thread(plain_nats.stop)
        await asyncio.to_thread(plain_postgres.stop)


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


@pytest.mark.integration
def test_audit_when_a_user_keeps_a_well_known_password_then_named(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "default.conf"
    users = [{"user": "execution", "password": "changeme"}, {"user": "operator", "password": secrets.token_urlsafe(12)}]
    write_private(config, f"listen: 127.0.0.1:{port}\naccounts {{ QMP {{ users: {json.dumps(users)} }} }}\n")
    server = subprocess.Popen([nats_server_binary(), "-c", str(config)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        assert wait_for_port(port, 10)
        findings = asyncio.run(audit_default_passwords(Connection(f"nats://127.0.0.1:{port}", "", str(tmp_path))))
    finally:
        server.terminate()
        server.wait(10)

    assert [(f.check, f.detail) for f in findings] == [
        ("credentials.default", "NATS user execution logs in with the password 'changeme'")]


def test_audit_when_a_password_would_not_load_in_nats_server_then_named() -> None:
    _checked, findings = asyncio.run(audit(None, None, None, {"risk": "12345", "collector": "-x9", "execution": "ok9"}))

    assert sorted(f.detail.split()[0] for f in findings if f.check == "credentials.format") == [
        "QMP_COLLECTOR_PASSWORD", "QMP_RISK_PASSWORD"]

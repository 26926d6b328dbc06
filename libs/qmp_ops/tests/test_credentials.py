"""`qmp credentials` and the `.env` part of `qmp audit security`: the repository's own `.env.example` filled with
new secrets that a real nats-server loads and logs in with, values already set kept, and a weak or exposed file
named."""

import asyncio
import os
import stat
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from qmp_ops.cli.main import app
from qmp_ops.credentials import audit_env_file, fill_credentials, secrets_of
from qmp_ops.runtime.nats_server import nats_server_binary
from qmp_ops.runtime.ports import free_port
from qmp_ops.runtime.supervisor import Connection
from qmp_ops.security import nats_login_accepted

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = ROOT / ".env.example"


def test_fill_when_made_from_the_example_then_every_secret_new_distinct_private_and_kept_on_a_second_run(
        tmp_path: Path) -> None:
    env_file = tmp_path / ".env"

    filled = fill_credentials(env_file, TEMPLATE)
    first = secrets_of(env_file)
    again = fill_credentials(env_file, TEMPLATE)

    assert set(filled) == set(first) >= {"QMP_OPERATOR_PASSWORD", "QMP_RISK_PASSWORD", "POSTGRES_PASSWORD",
                                         "GRAFANA_ADMIN_PASSWORD"}
    assert len(set(first.values())) == len(first) and all(len(v) >= 24 and v[0].isalpha() for v in first.values())
    assert again == [] and secrets_of(env_file) == first
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert audit_env_file(env_file) == []
    # The rest of the example is kept as it was (comments, the other settings).
    assert [line for line in env_file.read_text().splitlines() if "PASSWORD=" not in line] == [
        line for line in TEMPLATE.read_text().splitlines() if "PASSWORD=" not in line]


def test_audit_when_secrets_weak_shared_empty_or_the_file_open_then_each_named(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("QMP_RISK_PASSWORD=changeme\nQMP_DEPLOYER_PASSWORD=\nQMP_TLS_DIR=/certs\n"
                        "QMP_OPERATOR_PASSWORD=Aaaaaaaaaaaaaaaaaaaaaaaaaaaaa\nPOSTGRES_PASSWORD=Aaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
                        "GRAFANA_ADMIN_PASSWORD=1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n")
    env_file.chmod(0o644)

    checks = sorted(finding.check for finding in audit_env_file(env_file))
    kept = fill_credentials(env_file)  # fills the empty one only; the weak ones are the operator's to change

    assert checks == ["credentials.empty", "credentials.format", "credentials.shared", "credentials.weak",
                      "files.private"]
    assert kept == ["QMP_DEPLOYER_PASSWORD"] and secrets_of(env_file)["QMP_RISK_PASSWORD"] == "changeme"
    result = CliRunner().invoke(app, ["audit", "security", "--files-only", "--env-file", str(env_file),
                                      "--compose", str(ROOT / "docker-compose.yml"),
                                      "--nats-config", str(ROOT / "infra" / "nats" / "server.conf")])
    assert result.exit_code == 1 and "credentials.weak" in result.output and "credentials.shared" in result.output


async def test_credentials_command_when_no_file_then_made_and_nats_server_loads_and_takes_each_password(
        tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["credentials", "--env-file", str(tmp_path / ".env"),
                                      "--template", str(TEMPLATE)])
    missing = CliRunner().invoke(app, ["credentials", "--env-file", str(tmp_path / "none"),
                                       "--template", str(tmp_path / "absent")])
    values = secrets_of(tmp_path / ".env")
    assert result.exit_code == 0 and "QMP_RISK_PASSWORD" in result.output
    assert not any(value in result.output for value in values.values())  # names only, never a value
    assert missing.exit_code == 2

    # nats-server reads the passwords as config values from the environment, as the compose stack's does.
    roles = [name for name in values if name.startswith("QMP_")]
    users = ", ".join(f"{{user: u{i}, password: ${name}}}" for i, name in enumerate(roles))
    port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(f"listen: 127.0.0.1:{port}\nauthorization {{ users = [ {users} ] }}\n")
    server = subprocess.Popen([nats_server_binary(), "-c", str(config)], env={**os.environ, **values},  # noqa: ASYNC220
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    accepted = []
    try:
        for _ in range(100):  # the server's port opens
            assert server.poll() is None, "nats-server did not load the config with the generated passwords"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                break
            except OSError:
                await asyncio.sleep(0.05)
        stack = Connection(nats_url=f"nats://127.0.0.1:{port}", database_url="", run_dir=str(tmp_path))
        for i, name in enumerate(roles):
            for password in (values[name], values[name] + "x"):
                accepted.append(await nats_login_accepted(stack, f"u{i}", password))
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert accepted == [True, False] * len(roles)

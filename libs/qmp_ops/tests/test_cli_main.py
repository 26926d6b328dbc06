"""The operator's verbs as an operator types them: `qmp resume` and `qmp unlock` against the trading lock."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from qmp_core import bus, subjects
from qmp_lab.lock import LOCK_LOG, locked_strategies, write_lock
from qmp_ops.cli.main import STACK_VARIABLES, app
from qmp_ops.runtime.nats_server import EmbeddedNats
from qmp_ops.runtime.ports import free_port
from qmp_ops.runtime.supervisor import Connection, Stack, StackOptions


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the CLI's home is ./.qmp
    for name in STACK_VARIABLES:
        monkeypatch.delenv(name, raising=False)  # a stack named in the environment would be used instead
    return tmp_path / ".qmp"


def test_resume_when_strategy_locked_then_refused_and_told_how_to_unlock(home: Path) -> None:
    # issue 11 #3: resume used to lift the halt of a strategy the emergency protocol had locked.
    write_lock(home, "vol_target", "verification failed: walk_forward")

    result = CliRunner().invoke(app, ["resume", "vol_target", "--safe"])

    assert result.exit_code == 1
    assert "locked" in result.output and "qmp unlock vol_target --reason" in result.output
    assert "verification failed: walk_forward" in result.output


def test_resume_when_all_locked_then_every_strategy_refused(home: Path) -> None:
    write_lock(home, "ALL", "exchange review")

    result = CliRunner().invoke(app, ["resume", "mean_rev"])

    assert result.exit_code == 1 and "qmp unlock ALL" in result.output


def test_unlock_when_no_stack_then_lock_removed_logged_and_says_the_audit_event_was_not_published(
        home: Path) -> None:
    write_lock(home, "vol_target", "verification failed: fat_tail")

    result = CliRunner().invoke(app, ["unlock", "vol_target", "--reason", "reviewed the fat-tail report"])

    assert result.exit_code == 0, result.output
    assert locked_strategies(home) == {}
    log = [json.loads(line) for line in (home / LOCK_LOG).read_text().splitlines()]
    assert [(r["action"], r["strategy"]) for r in log] == [("lock", "vol_target"), ("unlock", "vol_target")]
    assert log[-1]["reason"] == "reviewed the fat-tail report"
    assert "not published" in result.output


def test_unlock_when_not_locked_or_no_reason_then_refused(home: Path) -> None:
    write_lock(home, "vol_target", "x")

    assert CliRunner().invoke(app, ["unlock", "other", "--reason", "r"]).exit_code == 1
    assert CliRunner().invoke(app, ["unlock", "vol_target"]).exit_code != 0  # --reason is required
    assert CliRunner().invoke(app, ["unlock", "vol_target", "--reason", " "]).exit_code == 1
    assert "vol_target" in locked_strategies(home)


@pytest.mark.parametrize("verb", [["status"], ["init"], ["halt", "vol_target"], ["history", "vol_target"],
                                  ["rollout", "status"], ["slippage", "calibrate"]])
def test_verb_when_no_stack_then_one_line_saying_what_to_do_and_no_traceback(home: Path, verb: list[str]) -> None:
    # issue 11 #10: every one of these printed a Python traceback.
    result = subprocess.run([sys.executable, "-m", "qmp_ops.cli.main", *verb], capture_output=True, text=True,
                            timeout=120, cwd=home.parent, env=os.environ.copy())

    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "qmp up" in lines[0], result.stderr


def test_verb_when_connection_file_points_at_a_dead_stack_then_one_line_and_no_traceback(home: Path) -> None:
    home.mkdir()
    port = free_port()  # nothing listens there
    Connection(f"nats://127.0.0.1:{port}", f"postgresql://u:p@127.0.0.1:{port}/qmp", str(home)).write(
        home / "connection.json")

    result = subprocess.run([sys.executable, "-m", "qmp_ops.cli.main", "halt", "vol_target"], capture_output=True,
                            text=True, timeout=120, cwd=home.parent)

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "qmp status" in result.stderr


@pytest.mark.integration
def test_status_when_stack_named_by_flags_and_no_connection_file_then_it_answers(
        home: Path, nats_credentials, monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 11 #9: without .qmp/connection.json the CLI could not operate any stack.
    for name in STACK_VARIABLES:
        monkeypatch.setenv(name, "")  # restored after the test: the flags set these for the command
    user, password = nats_credentials.for_user("operator")
    flags = ["--nats-url", nats_credentials.url] + (["--nats-user", user, "--nats-password", password] if user else [])
    flags += ["--nats-tls-ca", nats_credentials.tls_ca] if nats_credentials.tls_ca else []

    result = CliRunner().invoke(app, [*flags, "status", "--json"])

    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert set(status) == {"services", "strategies", "streams"}


@pytest.mark.integration
def test_halt_when_stack_named_by_environment_and_wrong_password_then_one_line_and_no_traceback(
        home: Path, nats_credentials) -> None:
    user, _ = nats_credentials.for_user("operator")
    if not user:
        pytest.skip("the servers in use take no credentials")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QMP_")}
    env |= {"QMP_NATS_URL": nats_credentials.url, "QMP_NATS_USER": user, "QMP_NATS_PASSWORD": "wrong",
            "QMP_NATS_TLS_CA": nats_credentials.tls_ca}

    result = subprocess.run([sys.executable, "-m", "qmp_ops.cli.main", "halt", "vol_target"], capture_output=True,
                            text=True, timeout=120, cwd=home.parent, env=env)

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert nats_credentials.url in result.stderr


@pytest.mark.integration
def test_init_when_fresh_nats_then_streams_declared_with_the_retention_of_the_environment(
        home: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    server = EmbeddedNats(home.parent / "nats", with_auth=False)
    server.start()
    try:
        monkeypatch.setenv("QMP_RETENTION_EXEC_MB", "64")
        result = CliRunner().invoke(app, ["--nats-url", server.credentials.url, "--nats-tls-ca",
                                          server.credentials.tls_ca, "--database-url", database_url, "init"])

        async def exec_limit() -> int:
            nc = await server.credentials.connect("operator")
            try:
                await bus.require_declared(nc.jetstream())
                return (await nc.jetstream().stream_info(subjects.STREAM_EXEC)).config.max_bytes
            finally:
                await nc.close()

        assert result.exit_code == 0, result.output
        assert "stream QMP_EXEC: 365 days, 64 MB" in result.output and "database migrated" in result.output
        assert asyncio.run(exec_limit()) == 64 * bus.MB
    finally:
        server.stop()


@pytest.mark.system
def test_as_when_a_named_operator_of_the_stack_halts_then_accepted_under_her_name(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = Stack(StackOptions(home=home, services=("deployer",), operators=("alice",)))
    try:
        stack.start_servers()
        stack.start_service("deployer")
        asyncio.run(stack.wait_healthy("deployer"))
        mine = json.loads((home / "operators" / "alice.json").read_text())

        halted = CliRunner().invoke(app, ["--as", "alice", "halt", "vol_target", "--reason", "alice saw it"])
        unknown = CliRunner().invoke(app, ["--as", "bob", "halt", "vol_target"])

        async def audited() -> list[str]:
            nc = await stack.connection.connect()
            try:
                return [json.loads(m.data)["sender"] async for m in bus.read_stream(
                    nc, subjects.STREAM_AUDIT, subjects.audit_control("vol_target"))]
            finally:
                await nc.close()

        senders = asyncio.run(audited())
    finally:
        stack.stop()

    assert mine["operator_user"] == "alice" and oct((home / "operators" / "alice.json").stat().st_mode)[-3:] == "600"
    assert halted.exit_code == 0, halted.output
    assert json.loads(halted.output)["state"]["status"] == "HALTED"
    assert unknown.exit_code != 0 and "qmp up --operators bob" in unknown.output
    assert senders == ["alice"]


@pytest.mark.system
def test_init_when_production_on_a_nats_cluster_then_three_replicas_compressed_and_flags_change_them(
        home: Path, database_url: str, unique_id: str) -> None:
    from qmp_ops.backup import with_database
    from qmp_ops.runtime.nats_server import EmbeddedNatsCluster

    name = f"qmp_init_{unique_id}".lower()  # a database of its own: production refuses one holding data

    async def create_database() -> None:
        admin = await asyncpg.connect(database_url)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()

    async def storage() -> set[tuple[str, int, str]]:
        nc = await cluster.credentials.connect("operator")
        try:
            infos = await nc.jetstream().streams_info()
            return {(info.config.name, info.config.num_replicas,
                     getattr(info.config.compression, "value", info.config.compression)) for info in infos}
        finally:
            await nc.close()

    asyncio.run(create_database())
    cluster = EmbeddedNatsCluster(home.parent / "cluster", with_auth=False)
    cluster.start()
    try:
        flags = ["--nats-url", cluster.credentials.url, "--nats-tls-ca", cluster.credentials.tls_ca,
                 "--database-url", with_database(database_url, name)]
        production = CliRunner().invoke(app, [*flags, "init", "--env", "production"])
        replicated = asyncio.run(storage())
        single = CliRunner().invoke(app, [*flags, "init", "--replicas", "1", "--compression", "none"])
        back = asyncio.run(storage())
        too_many = CliRunner().invoke(app, [*flags, "init", "--replicas", "5"])
    finally:
        cluster.stop()

    assert production.exit_code == 0, production.output
    assert "stream QMP_EXEC: 365 days, 1024 MB, 3 replicas, compression s2" in production.output
    assert {name for name, _, _ in replicated} == set(bus.DECLARED)
    assert all(replicas == 3 for _, replicas, _ in replicated)
    assert all(compression == "s2" for stream, _, compression in replicated if not stream.startswith("KV_"))
    assert single.exit_code == 0, single.output
    assert all(replicas == 1 and compression == "none" for _, replicas, compression in back)
    assert too_many.exit_code != 0 and "replicas" in too_many.output

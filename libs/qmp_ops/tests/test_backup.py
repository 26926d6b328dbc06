"""Backup and restore against a real PostgreSQL and nats-server: a database and a nats-server of the test's own
(a restore replaces every table and stream), with the stack's users, permissions and TLS."""

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from qmp_core import bus, subjects
from qmp_core.db import migrate
from qmp_ops.backup import (
    BackupError,
    backup,
    held_states,
    read_manifest,
    restore,
    stream_checksum,
    verify,
    with_database,
)
from qmp_ops.runtime.certificates import ServerCertificates
from qmp_ops.runtime.nats_server import EmbeddedNats, NatsCredentials

pytestmark = pytest.mark.integration


@pytest.fixture
def own_nats(tmp_path: Path, certificates: ServerCertificates) -> Iterator[NatsCredentials]:
    """A nats-server of the test's own, with the stack's users and TLS: a restore replaces its streams."""
    server = EmbeddedNats(tmp_path / "nats", certificates=certificates)
    yield server.start()
    server.stop()


@pytest.fixture
async def own_operator_nc(own_nats: NatsCredentials) -> AsyncIterator:
    nc = await own_nats.connect("operator")
    await bus.declare(nc.jetstream())
    yield nc
    await nc.close()


@pytest.fixture
async def own_database(database_url: str, unique_id: str):
    """A database of the test's own on the shared server: a restore replaces every table of it."""
    name = f"qmp_backup_{unique_id}".lower()
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = with_database(database_url, name)
    await migrate(url)
    yield url
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def test_backup_when_verified_then_restored_after_loss_then_rows_streams_and_consumers_back(
        own_database: str, own_operator_nc, own_nats: NatsCredentials, unique_id: str, tmp_path: Path) -> None:
    db = await asyncpg.connect(own_database)
    await db.executemany("INSERT INTO bars (ts, venue, symbol, open, high, low, close, volume) "
                         "VALUES (to_timestamp($1), 'bk', $2, 1, 1, 1, 1.5, 1)", [(i, f"S{i}") for i in range(50)])
    execution = await own_nats.connect("execution")
    for i in range(300):  # orders and fills, with the publisher's message ids
        await execution.jetstream().publish(subjects.fills(unique_id), f'{{"n":{i}}}'.encode(),
                                            headers={"Nats-Msg-Id": f"{unique_id}-{i}"})
    js = own_operator_nc.jetstream()
    # A service's durable consumer part-way through the stream: its position is part of the backup.
    await js.add_consumer(subjects.STREAM_EXEC, ConsumerConfig(durable_name="bk-reader", ack_policy=AckPolicy.EXPLICIT))
    reader = await js.pull_subscribe_bind("bk-reader", subjects.STREAM_EXEC)
    for msg in await reader.fetch(120):
        await msg.ack_sync()
    deployer = await own_nats.connect("deployer")  # the one identity that writes the bucket
    kv = await bus.control_bucket(deployer.jetstream())
    key = f"{unique_id}.operator"
    await kv.put(key, json.dumps({"strategy": unique_id, "status": "HALTED", "reason": "look"}).encode())
    before = await stream_checksum(own_operator_nc, subjects.STREAM_EXEC)

    manifest = await backup(own_operator_nc, own_database, tmp_path / "bk")
    verified = await verify(tmp_path / "bk", own_database)

    assert manifest["tables"]["bars"]["rows"] == 50 == verified["tables"]["bars"]["rows"]
    assert manifest["tables"]["bars"]["checksum"] == verified["tables"]["bars"]["checksum"] != "0"
    assert manifest["streams"][subjects.STREAM_EXEC] == before == verified["streams"][subjects.STREAM_EXEC]
    assert before["messages"] == 300 and key in manifest["buckets"]["qmp_control"]
    # What is lost after the backup: rows deleted and changed, the stream gone, the halt lifted.
    await db.execute("DELETE FROM bars WHERE venue = 'bk' AND symbol < 'S3'")
    await db.execute("UPDATE bars SET close = 2 WHERE venue = 'bk'")
    await js.delete_stream(subjects.STREAM_EXEC)
    await kv.put(key, json.dumps({"strategy": unique_id, "status": "ACTIVE"}).encode())

    restored = await restore(tmp_path / "bk", own_database, own_operator_nc)

    assert restored["tables"]["bars"] == {"rows": 50, "checksum": manifest["tables"]["bars"]["checksum"]}
    assert await db.fetchval("SELECT count(*) FROM bars WHERE venue = 'bk' AND close = 1.5") == 50
    assert restored["streams"][subjects.STREAM_EXEC] == before == \
        await stream_checksum(own_operator_nc, subjects.STREAM_EXEC)
    consumer = await js.consumer_info(subjects.STREAM_EXEC, "bk-reader")
    assert consumer.ack_floor.stream_seq == 120 and consumer.num_pending == 180
    # The trading state is not written back (only the deployer's contract changes it): it is shown.
    assert json.loads((await kv.get(key)).value)["status"] == "ACTIVE"
    assert {"key": key, "status": "HALTED", "reason": "look", "size_multiplier": 1.0, "safe_mode": False} in \
        held_states(tmp_path / "bk")
    await db.close()
    await deployer.close()
    await execution.close()


async def test_backup_when_a_file_changed_directory_not_empty_or_restore_differs_then_refused_saying_which(
        own_database: str, own_operator_nc, own_nats: NatsCredentials, unique_id: str, tmp_path: Path) -> None:
    execution = await own_nats.connect("execution")
    await execution.jetstream().publish(subjects.fills(unique_id), b'{"n":1}')
    await backup(own_operator_nc, own_database, tmp_path / "bk")
    with pytest.raises(BackupError, match="not empty"):
        await backup(own_operator_nc, own_database, tmp_path / "bk")
    # A manifest whose checksums the restored data does not match (as if the data had been damaged).
    manifest_path = tmp_path / "bk" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["streams"][subjects.STREAM_EXEC]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match=f"the streams differ.*{subjects.STREAM_EXEC}"):
        await verify(tmp_path / "bk", own_database)
    manifest["tables"]["bars"]["checksum"] = "12345"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match=r"the tables differ.*bars"):
        await verify(tmp_path / "bk", own_database)
    with (tmp_path / "bk" / "buckets.json").open("a") as handle:
        handle.write(" ")
    with pytest.raises(BackupError, match=r"buckets\.json is missing or changed"):
        read_manifest(tmp_path / "bk")
    await execution.close()


def test_backup_and_restore_commands_when_run_as_an_operator_then_verified_and_refused_without_yes(
        own_database: str, own_nats: NatsCredentials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nats_credentials = own_nats
    from typer.testing import CliRunner

    from qmp_ops.cli.main import STACK_VARIABLES, app

    async def declared() -> None:
        nc = await own_nats.connect("operator")
        await bus.declare(nc.jetstream())
        await nc.close()
        deployer = await own_nats.connect("deployer")  # the audit trail's one writer
        await deployer.jetstream().publish(subjects.AUDIT_ALL.replace(">", "bk"), b"{}")
        await deployer.close()

    asyncio.run(declared())
    for name in STACK_VARIABLES:
        monkeypatch.setenv(name, "")  # restored after the test: the flags set these for the command
    user, password = nats_credentials.for_user("operator")
    flags = ["--nats-url", nats_credentials.url, "--database-url", own_database]
    flags += ["--nats-user", user, "--nats-password", password] if user else []
    flags += ["--nats-tls-ca", nats_credentials.tls_ca] if nats_credentials.tls_ca else []

    made = CliRunner().invoke(app, [*flags, "backup", "--out", str(tmp_path / "bk")])
    refused = CliRunner().invoke(app, [*flags, "restore", str(tmp_path / "bk")])
    restored = CliRunner().invoke(app, [*flags, "restore", str(tmp_path / "bk"), "--yes"])

    assert made.exit_code == 0 and "verified" in made.output, made.output
    assert refused.exit_code == 1 and "--yes" in refused.output
    assert restored.exit_code == 0 and "restored 7 streams (1 messages" in restored.output, \
        restored.output


async def test_restore_when_latest_asked_then_the_newest_backup_and_refused_while_a_service_answers(
        own_database: str, own_nats: NatsCredentials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nats_credentials = own_nats
    from typer.testing import CliRunner

    from qmp_core import subjects
    from qmp_ops.cli.main import STACK_VARIABLES, app

    for name in STACK_VARIABLES:
        monkeypatch.setenv(name, "")
    monkeypatch.chdir(tmp_path)  # `qmp backup` writes under ./backups by default, where --latest looks
    user, password = nats_credentials.for_user("operator")
    flags = ["--nats-url", nats_credentials.url, "--database-url", own_database]
    flags += ["--nats-user", user, "--nats-password", password] if user else []
    flags += ["--nats-tls-ca", nats_credentials.tls_ca] if nats_credentials.tls_ca else []

    def invoke(*args: str):  # the CLI runs its own event loop: off this test's
        return asyncio.to_thread(CliRunner().invoke, app, [*flags, *args])

    made = await invoke("backup", "--no-verify")
    risk = await nats_credentials.connect("risk")  # a risk service of this stack still running

    async def healthy(msg) -> None:
        await msg.respond(b"{}")

    answer = await risk.subscribe(subjects.health("risk"), cb=healthy)
    await risk.flush()
    refused = await invoke("restore", "--latest", "--yes")
    await answer.unsubscribe()
    await risk.close()
    restored = await invoke("restore", "--latest", "--yes")

    backups = sorted((tmp_path / "backups").iterdir())
    assert made.exit_code == 0 and len(backups) == 1, made.output
    assert refused.exit_code == 1 and "risk of this stack answer" in refused.output, refused.output
    assert restored.exit_code == 0 and f"from {backups[0].relative_to(tmp_path)}" in restored.output, restored.output

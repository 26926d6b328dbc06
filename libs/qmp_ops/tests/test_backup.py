"""Backup and restore against a real PostgreSQL and nats-server: a database of its own, the shared buckets."""

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest

from qmp_core import bus
from qmp_core.db import migrate
from qmp_ops.backup import BackupError, backup, held_states, read_manifest, restore, verify, with_database

pytestmark = pytest.mark.integration


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


async def test_backup_when_verified_then_restored_after_loss_then_rows_back_and_held_states_shown(
        own_database: str, operator_nc, nats_credentials, unique_id: str, tmp_path: Path) -> None:
    db = await asyncpg.connect(own_database)
    await db.executemany("INSERT INTO bars (ts, venue, symbol, open, high, low, close, volume) "
                         "VALUES (to_timestamp($1), 'bk', $2, 1, 1, 1, 1, 1)", [(i, f"S{i}") for i in range(50)])
    deployer = await nats_credentials.connect("deployer")  # the one identity that writes the bucket
    kv = await bus.control_bucket(deployer.jetstream())
    key = f"{unique_id}.operator"
    await kv.put(key, json.dumps({"strategy": unique_id, "status": "HALTED", "reason": "look"}).encode())

    manifest = await backup(operator_nc, own_database, tmp_path / "bk")
    restored_counts = await verify(tmp_path / "bk", own_database)

    assert manifest["tables"]["bars"]["rows"] == 50 and restored_counts["bars"] == 50
    assert key in manifest["buckets"]["qmp_control"]
    # What is lost after the backup: rows deleted, the halt lifted.
    await db.execute("DELETE FROM bars WHERE venue = 'bk'")
    await kv.put(key, json.dumps({"strategy": unique_id, "status": "ACTIVE"}).encode())

    counts = await restore(tmp_path / "bk", own_database)

    assert counts["bars"] == 50 == await db.fetchval("SELECT count(*) FROM bars WHERE venue = 'bk'")
    # The trading state is not written back (only the deployer's contract changes it): it is shown.
    assert json.loads((await kv.get(key)).value)["status"] == "ACTIVE"
    assert {"key": key, "status": "HALTED", "reason": "look", "size_multiplier": 1.0, "safe_mode": False} in \
        held_states(tmp_path / "bk")
    await db.close()
    await deployer.close()


async def test_backup_when_a_file_changed_or_directory_not_empty_then_refused_saying_which(
        own_database: str, operator_nc, tmp_path: Path) -> None:
    await backup(operator_nc, own_database, tmp_path / "bk")
    with pytest.raises(BackupError, match="not empty"):
        await backup(operator_nc, own_database, tmp_path / "bk")
    with (tmp_path / "bk" / "buckets.json").open("a") as handle:
        handle.write(" ")
    with pytest.raises(BackupError, match=r"buckets\.json is missing or changed"):
        read_manifest(tmp_path / "bk")


def test_backup_and_restore_commands_when_run_as_an_operator_then_verified_and_refused_without_yes(
        own_database: str, nats_credentials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from qmp_ops.cli.main import STACK_VARIABLES, app

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
    assert restored.exit_code == 0 and "restored" in restored.output, restored.output


async def test_restore_when_latest_asked_then_the_newest_backup_and_refused_while_a_service_answers(
        own_database: str, nats_credentials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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

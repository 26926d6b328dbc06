"""A database's environment on a real PostgreSQL (a database of the test's own): production is tagged only
on an empty database (or when told), is never cleared and never tagged test; a test database is cleared."""

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest

from qmp_core.db import migrate
from qmp_ops.backup import with_database
from qmp_ops.environment import WrongEnvironment, clear_test_data, populated, set_environment, tag
from qmp_ops.runtime.nats_server import NatsCredentials

pytestmark = pytest.mark.integration


@pytest.fixture
async def own_database(database_url: str, unique_id: str):
    name = f"qmp_env_{unique_id}".lower()
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = with_database(database_url, name)
    await migrate(url)
    yield url
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def add_bars(db: asyncpg.Connection, rows: int = 5) -> None:
    await db.executemany("INSERT INTO bars (ts, venue, symbol, open, high, low, close, volume) "
                         "VALUES (to_timestamp($1), 'env', 'S', 1, 1, 1, 1, 1)", [(i,) for i in range(rows)])


async def test_set_environment_when_a_test_run_left_data_then_production_refused_unless_allowed_and_then_kept(
        own_database: str) -> None:
    db = await asyncpg.connect(own_database)
    try:
        await set_environment(db, "test")
        await add_bars(db)
        with pytest.raises(WrongEnvironment, match=r"bars \(5 rows\).*--allow-test-data"):
            await set_environment(db, "production")
        assert await tag(db) == "test"
        await set_environment(db, "production", allow_other_data=True)
        with pytest.raises(WrongEnvironment, match="never tagged test again"):
            await set_environment(db, "test")
        with pytest.raises(WrongEnvironment, match="only a test database is cleared"):
            await clear_test_data(db)
        assert await tag(db) == "production" and await populated(db) == {"bars": 5}
    finally:
        await db.close()


async def test_clear_test_data_when_tagged_test_then_every_data_table_emptied(own_database: str) -> None:
    db = await asyncpg.connect(own_database)
    try:
        await set_environment(db, "test")
        await add_bars(db, 7)
        await db.execute("INSERT INTO dead_letters (service, subject, reason, payload) VALUES ('x', 'y', 'z', '')")
        deleted = await clear_test_data(db)
        left = await populated(db)
    finally:
        await db.close()
    assert (deleted["bars"], deleted["dead_letters"], left) == (7, 1, {})


async def test_qmp_init_when_env_production_on_an_empty_database_then_tagged_and_clear_test_data_refused(
        own_database: str, nats_credentials: NatsCredentials, operator_nc) -> None:
    user, password = nats_credentials.for_user("operator")
    flags = ["--nats-url", nats_credentials.url, "--database-url", own_database]
    flags += ["--nats-user", user, "--nats-password", password] if user else []
    flags += ["--nats-tls-ca", nats_credentials.tls_ca] if nats_credentials.tls_ca else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("QMP_")} | {"COLUMNS": "200"}

    def qmp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "qmp_ops.cli.main", *flags, *args], capture_output=True,
                              text=True, timeout=120, env=env)

    initialised = await asyncio.to_thread(qmp, "init", "--env", "production")
    again = await asyncio.to_thread(qmp, "init", "--env", "production")  # idempotent
    refused = await asyncio.to_thread(qmp, "db", "clear-test-data", "--confirm")

    assert initialised.returncode == 0 and "database tagged production" in initialised.stdout, initialised.stderr
    assert again.returncode == 0
    assert refused.returncode == 1 and "tagged production" in refused.stderr

"""Fixtures of the operator side's tests."""

import asyncpg
import pytest

from qmp_core.db import migrate
from qmp_ops.backup import with_database


@pytest.fixture
async def own_database(database_url: str, unique_id: str):
    name = f"qmp_import_{unique_id}".lower()
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = with_database(database_url, name)
    await migrate(url)
    yield url
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()

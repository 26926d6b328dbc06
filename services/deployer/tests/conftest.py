"""The deployer's test fixtures over a real stack: the test plan's file, a deployer app with it, risk's client."""

import uuid
from pathlib import Path

import pytest
from deployer_stack import PLAN, connect_as, wait_lease_free

from qmp_deployer.app import create_app
from qmp_ops.testing import settings_for


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "itest.toml"
    path.write_bytes(PLAN)
    return path


@pytest.fixture
async def deployer(nats_credentials, database_url, plan_file, tmp_path):
    await wait_lease_free(nats_credentials)
    settings = settings_for(nats_credentials, "deployer", database_url, run_dir=str(tmp_path / "run"))
    app = create_app(settings, plan_file=str(plan_file), instance_id="it-" + uuid.uuid4().hex[:6],
                     memory_probe="off", lease_ttl_s=3.0)
    async with app:
        yield app


@pytest.fixture
async def risk_nc(nats_credentials):
    nc = await connect_as(nats_credentials, "risk")
    yield nc
    await nc.close()

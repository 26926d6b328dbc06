"""Pytest fixtures for tests that talk to a real nats-server and PostgreSQL.

Embedded servers by default (one per test session), with TLS on like every embedded stack (one CA for
both); `QMP_NATS_URL` / `QMP_DATABASE_URL` select running ones instead (`QMP_NATS_TLS_CA` names the CA of
a running NATS with TLS). Registered by the repository's root conftest.py.
"""

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from qmp_core import bus
from qmp_core.config import ServiceSettings
from qmp_core.db import migrate
from qmp_ops.cli.main import STACK_VARIABLES
from qmp_ops.runtime.certificates import ServerCertificates
from qmp_ops.runtime.nats_server import EmbeddedNats, NatsCredentials
from qmp_ops.runtime.postgres_server import EmbeddedPostgres
from qmp_ops.runtime.supervisor import Connection

TEST_OPERATORS = ("alice",)  # a named operator (a person) on the session's server


@pytest.fixture(autouse=True)
def stack_environment_restored() -> Iterator[None]:
    """Undo what a test's `qmp --nats-url/--database-url ...` wrote to the environment.

    The CLI's global flags set QMP_NATS_URL and the like for the rest of the process, which a later
    test's `Stack` would take for an external stack to use.
    """
    saved = {name: os.environ.get(name) for name in STACK_VARIABLES}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def run_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="qmp-test-") as path:
        yield Path(path)


@pytest.fixture(scope="session")
def certificates(run_dir: Path) -> ServerCertificates:
    """The session's CA and server certificate, shared by its NATS and PostgreSQL."""
    return ServerCertificates.issue(run_dir / "tls")


@pytest.fixture(scope="session")
def nats_credentials(run_dir: Path, certificates: ServerCertificates) -> Iterator[NatsCredentials]:
    external = os.environ.get("QMP_NATS_URL")
    if external:
        yield NatsCredentials(url=external, tls_ca=os.environ.get("QMP_NATS_TLS_CA", ""))
        return
    # Tests name their own durable consumers (one server for the session): any name on a role's
    # streams. The exact grants are held by tests/security and by every stack the system tests start.
    server = EmbeddedNats(run_dir / "nats", durable_names="any", operators=TEST_OPERATORS, certificates=certificates)
    credentials = server.start()
    yield credentials
    server.stop()


@pytest.fixture(scope="session")
def database_url(run_dir: Path, certificates: ServerCertificates) -> Iterator[str]:
    external = os.environ.get("QMP_DATABASE_URL")
    if external:
        url = external
        server = None
    else:
        server = EmbeddedPostgres(run_dir / "postgres", certificates=certificates)
        url = server.start()
    try:
        asyncio.run(migrate(url))
    except BaseException:
        if server is not None:
            server.stop()
        raise
    yield url
    if server is not None:
        server.stop()


def settings_for(credentials: NatsCredentials, user: str, database_url: str = "", **overrides: object) -> (
    ServiceSettings
):
    """Return service settings that connect as `user` (no credentials when the server has auth off)."""
    name, password = credentials.for_user(user)
    values: dict[str, object] = {"nats_url": credentials.url, "nats_user": name, "nats_password": password,
                                 "nats_tls_ca": credentials.tls_ca}
    if database_url:
        values["database_url"] = database_url
    values.update(overrides)
    return msgspec.convert(values, ServiceSettings)


async def connect_as(credentials: NatsCredentials, user: str) -> Client:
    """Connect as one of the stack's users (operator or a service), with its permissions."""
    return await credentials.connect(user)


def operator_connection(credentials: NatsCredentials, user: str = "operator", database_url: str = "",
                        run_dir: str = "") -> Connection:
    """Return how an operator's commands reach the session's stack, as `user` (operator or a named one)."""
    name, password = credentials.for_user(user)
    return Connection(credentials.url, database_url, run_dir, name, password, tls_ca=credentials.tls_ca)


@pytest.fixture
async def operator_nc(nats_credentials: NatsCredentials) -> AsyncIterator[Client]:
    """A NATS connection as the operator, with the streams and KV declared."""
    nc = await nats_credentials.connect("operator")
    await bus.declare(nc.jetstream())
    yield nc
    await nc.drain()


def chromium() -> str:
    """The Chromium a browser test drives through Playwright (Debian's package); the test is skipped without."""
    path = os.environ.get("QMP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium: `./dev test` installs Debian's chromium package where it may")
    return path


@pytest.fixture
def unique_id() -> str:
    """A strategy / venue id no other test uses, so tests can share servers."""
    return "t" + uuid.uuid4().hex[:10]

"""Core plumbing against real servers: migrations, stream declarations, dedup, permissions."""

import asyncio

import asyncpg
import nats
import pytest

from qmp_core import bus, subjects
from qmp_core.db import migrate
from qmp_core.messages import DeadLetter
from qmp_ops.runtime.nats_server import EmbeddedNats
from qmp_ops.runtime.postgres_server import EmbeddedPostgres
from qmp_ops.runtime.supervisor import redacted, reset_bus

pytestmark = pytest.mark.integration


async def test_migrate_when_run_twice_then_second_run_applies_nothing(database_url):
    assert await migrate(database_url) == []
    connection = await asyncpg.connect(database_url)
    try:
        tables = {row["tablename"] for row in await connection.fetch("SELECT tablename FROM pg_tables")}
    finally:
        await connection.close()
    assert {"bars", "fills", "risk_snapshots", "control_audit", "breaker_events"} <= tables


async def test_declare_when_run_twice_then_streams_and_bucket_exist_once(operator_nc):
    js = operator_nc.jetstream()
    await bus.declare(js)
    names = {info.config.name for info in await js.streams_info()}
    assert {config.name for config in bus.STREAMS} <= names
    status = await (await bus.control_bucket(js)).status()
    assert status.bucket == subjects.KV_CONTROL


async def test_publish_when_same_msg_id_twice_then_stored_once(nats_credentials, operator_nc, unique_id):
    deployer = await nats_credentials.connect("deployer")
    js = deployer.jetstream()
    subject = f"qmp.audit.control.{unique_id}"
    letter = DeadLetter(service="t", subject="s", reason="r", payload="p", ts_event=1)
    for _ in range(3):
        await bus.publish(js, subject, letter, msg_id=f"{unique_id}-1")
    await bus.publish(js, subject, letter, msg_id=f"{unique_id}-2")
    info = await js.stream_info(subjects.STREAM_AUDIT, subjects_filter=subject)
    await deployer.close()
    assert info.state.subjects[subject] == 2


async def test_publish_when_collector_targets_control_then_permission_violation(nats_credentials):
    user, _password = nats_credentials.for_user("collector")
    if not user:
        pytest.skip("the running NATS server has no per-service users")
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    nc = await nats_credentials.connect(user, error_cb=on_error)
    await nc.publish("qmp.control.x", b"{}")
    await nc.publish("qmp.exec.x.fills", b"{}")
    await nc.flush()
    await asyncio.sleep(0.2)
    await nc.close()
    violations = [str(error) for error in errors if "permissions violation" in str(error)]
    assert len(violations) == 2


@pytest.mark.parametrize("user", ["execution", "risk", "collector", "deployer"])
async def test_delete_stream_when_a_service_tries_then_refused_and_control_bucket_survives(
        nats_credentials, operator_nc, user):
    name, _password = nats_credentials.for_user(user)
    if not name:
        pytest.skip("the running NATS server has no per-service users")
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    nc = await nats_credentials.connect(name, error_cb=on_error)
    for api in ("STREAM.DELETE", "STREAM.PURGE"):
        with pytest.raises(nats.errors.Error):
            await nc.request(f"$JS.API.{api}.KV_{subjects.KV_CONTROL}", b"", timeout=1)
    await nc.close()
    assert any("permissions violation" in str(error) for error in errors)
    info = await operator_nc.jetstream().stream_info(f"KV_{subjects.KV_CONTROL}")
    assert info.config.name == f"KV_{subjects.KV_CONTROL}"


async def test_embedded_postgres_when_connecting_without_the_run_password_then_refused(tmp_path):
    server = EmbeddedPostgres(tmp_path / "pg")
    url = await asyncio.to_thread(server.start)
    try:
        connection = await asyncpg.connect(url)
        assert await connection.fetchval("SELECT current_database()") == "qmp"
        await connection.close()
        for wrong in ("", "guess"):
            with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
                await asyncpg.connect(url.replace(f":{server.password}@", f":{wrong}@"))
        password_file = tmp_path / "pg" / "postgres.password"
        assert password_file.stat().st_mode & 0o077 == 0
        assert server.password not in redacted(url) and f"127.0.0.1:{server.port}/qmp?" in redacted(url)
        assert "sslmode=verify-full" in url  # TLS, and the client checks the server against the run's CA
    finally:
        await asyncio.to_thread(server.stop)


async def test_reset_bus_when_a_fresh_demo_starts_then_streams_and_both_buckets_are_gone(tmp_path):
    server = EmbeddedNats(tmp_path / "nats", with_auth=False)  # its own server: a reset wipes everything
    credentials = await asyncio.to_thread(server.start)
    nc = await credentials.connect("operator")
    try:
        js = nc.jetstream()
        await bus.declare(js)
        rollouts = await js.key_value(subjects.KV_ROLLOUTS)
        await rollouts.put("vol_target", b'{"phase": "live_50"}')
        await (await bus.control_bucket(js)).put("vol_target.operator", b'{"status": "HALTED"}')

        await reset_bus(js)

        names = {info.config.name for info in await js.streams_info()}
        assert names.isdisjoint({config.name for config in bus.STREAMS})
        assert names.isdisjoint({f"KV_{subjects.KV_CONTROL}", f"KV_{subjects.KV_ROLLOUTS}"})
    finally:
        await nc.close()
        await asyncio.to_thread(server.stop)


async def test_embedded_postgres_tls_front_when_a_query_times_out_then_cancelled_and_plaintext_refused_with_why(
        database_url: str) -> None:
    # The TLS front relays PostgreSQL's cancel requests (asyncpg sends one on a timeout), and says why it
    # refuses a client that starts without TLS.
    if "sslmode=verify-full" not in database_url:
        pytest.skip("the database in use is not the embedded one behind its TLS front")
    connection = await asyncpg.connect(database_url)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await connection.execute("SELECT pg_sleep(30)", timeout=0.5)
        assert asyncio.get_running_loop().time() - started < 5  # cancelled, not waited out
        assert await connection.fetchval("SELECT 1") == 1  # the connection is usable again
    finally:
        await connection.close()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="accepts only TLS"):
        await asyncpg.connect(database_url.replace("sslmode=verify-full", "sslmode=disable"))

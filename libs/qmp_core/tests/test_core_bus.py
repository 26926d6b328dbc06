"""Bus helpers against a real nats-server: idempotent declaration, deduplicated publishes, dead letters."""

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from qmp_core import bus, subjects
from qmp_core.clock import TestClock
from qmp_core.config import Retention, load_settings
from qmp_core.messages import DeadLetter, codec
from qmp_ops.runtime.nats_server import EmbeddedNats, NatsCredentials
from qmp_ops.testing import connect_as

pytestmark = pytest.mark.integration


@pytest.fixture
async def risk_nc(nats_credentials: NatsCredentials) -> AsyncIterator[Client]:
    """A connection as the risk service: it may publish its own dead letters."""
    nc = await connect_as(nats_credentials, "risk")
    yield nc
    await nc.drain()


async def test_declare_when_run_twice_then_every_stream_and_bucket_exists_once(operator_nc: Client) -> None:
    js = operator_nc.jetstream()

    await bus.declare(js)
    await bus.declare(js)

    names = {stream.config.name for stream in await js.streams_info()}
    assert {config.name for config in bus.STREAMS} <= names
    assert (await bus.control_bucket(js)).__class__.__name__ == "KeyValue"


async def test_publish_when_same_msg_id_twice_then_stream_keeps_one(operator_nc: Client, risk_nc: Client,
                                                                   unique_id: str) -> None:
    js = risk_nc.jetstream()
    subject = subjects.dlq("risk")
    letter = DeadLetter(service="risk", subject=unique_id, reason="r", payload="p", ts_event=1)
    before = (await operator_nc.jetstream().stream_info(subjects.STREAM_DLQ)).state.messages

    await bus.publish(js, subject, letter, msg_id=f"{unique_id}:1")
    await bus.publish(js, subject, letter, msg_id=f"{unique_id}:1")
    await bus.publish(js, subject, letter, msg_id=f"{unique_id}:2")

    after = (await operator_nc.jetstream().stream_info(subjects.STREAM_DLQ)).state.messages
    assert after - before == 2


async def test_dead_letter_when_payload_long_and_binary_then_excerpt_with_reason_on_the_service_subject(
        operator_nc: Client, risk_nc: Client, unique_id: str) -> None:
    # Read back from the stream, from where it stood: a core subscription on this subject, shared with every
    # other test's letters, may drop messages as a slow consumer under a loaded run.
    first = ((await operator_nc.jetstream().stream_info(subjects.STREAM_DLQ)).state.last_seq or 0) + 1
    payload = b"\xff" + b"x" * (bus.PAYLOAD_EXCERPT * 2)

    await bus.dead_letter(risk_nc.jetstream(), "risk", unique_id, "bad price", payload, TestClock(42))

    letters = [codec(DeadLetter).decode(m.data) async for m in bus.read_stream(
        operator_nc, subjects.STREAM_DLQ, subjects.dlq("risk"), first_seq=first)]
    (letter,) = [letter for letter in letters if letter.subject == unique_id]  # other tests' letters too
    assert (letter.service, letter.reason, letter.ts_event) == ("risk", "bad price", 42)
    # Not UTF-8: the excerpt is base64, so the bytes can be read back as they came.
    assert len(letter.payload) == bus.PAYLOAD_EXCERPT and letter.payload.startswith("base64:")
    excerpt = letter.payload.removeprefix("base64:")
    assert payload.startswith(base64.b64decode(excerpt[: len(excerpt) // 4 * 4]))


def test_headers_for_when_msg_id_and_extra_given_then_both_present_and_no_id_without_one() -> None:
    headers = bus.headers_for("abc", {"X-Test": "1"})

    assert headers["Nats-Msg-Id"] == "abc" and headers["X-Test"] == "1"
    assert "Nats-Msg-Id" not in bus.headers_for(None)
    json.dumps(headers)  # plain strings only: a NATS header map


async def test_dead_letter_later_when_the_publish_fails_then_logged_and_the_caller_goes_on(
        nats_credentials: NatsCredentials, caplog: pytest.LogCaptureFixture) -> None:
    nc = await nats_credentials.connect("risk")
    js = nc.jetstream()
    await nc.close()  # every publish on it now fails
    tasks: set = set()

    bus.dead_letter_later(tasks, js, "risk", "$KV.qmp_control.x.risk", "invalid control entry", b"?", TestClock(1))
    await asyncio.gather(*tasks)

    assert not tasks
    assert any(record.message == "dead letter not published" for record in caplog.records)


# ---------------------------------------------------------------- declaration by the admin, with limits
@pytest.fixture
async def fresh_nc(tmp_path: Path) -> AsyncIterator[Client]:
    """A connection to a nats-server of this test alone: nothing declared yet."""
    server = EmbeddedNats(tmp_path, with_auth=False)
    server.start()
    nc = await server.credentials.connect("operator")
    try:
        yield nc
    finally:
        await nc.close()
        server.stop()


@pytest.fixture
def fresh_js(fresh_nc: Client) -> nats.js.JetStreamContext:
    return fresh_nc.jetstream()


async def test_read_stream_when_many_messages_then_the_subject_s_in_order_within_bounds_without_a_consumer(
        fresh_nc: Client) -> None:
    js = fresh_nc.jetstream()
    await bus.declare(js)
    for i in range(700):
        await js.publish(subjects.fills("a") if i % 3 else subjects.orders("a"), str(i).encode())

    fills = [m async for m in bus.read_stream(fresh_nc, subjects.STREAM_EXEC, subjects.fills("a"), batch=100)]
    window = [m async for m in bus.read_stream(fresh_nc, subjects.STREAM_EXEC, "qmp.exec.a.*", first_seq=250,
                                               upto_seq=260, batch=4)]
    none = [m async for m in bus.read_stream(fresh_nc, subjects.STREAM_EXEC, subjects.portfolio("a"))]

    assert [int(m.data) for m in fills] == [i for i in range(700) if i % 3]
    assert all(m.subject == subjects.fills("a") and m.seq == int(m.data) + 1 for m in fills)
    assert [m.seq for m in window] == list(range(250, 261))
    assert none == []
    assert (await js.stream_info(subjects.STREAM_EXEC)).state.consumer_count == 0


async def test_require_declared_when_nothing_declared_then_refused_with_the_command_to_run(
        fresh_js: nats.js.JetStreamContext) -> None:
    with pytest.raises(bus.NotDeclared, match="qmp init"):
        await bus.require_declared(fresh_js)


async def test_declare_when_retention_given_then_every_stream_and_bucket_bounded_and_a_change_applied(
        fresh_js: nats.js.JetStreamContext) -> None:
    await bus.declare(fresh_js, Retention(retention_exec_days=10, retention_exec_mb=64, retention_control_mb=4))
    await bus.require_declared(fresh_js)
    infos = {info.config.name: info.config for info in await fresh_js.streams_info()}
    assert all(config.max_bytes and config.max_bytes > 0 and config.max_age for name, config in infos.items()
               if not name.startswith("KV_"))
    assert (infos[subjects.STREAM_EXEC].max_age, infos[subjects.STREAM_EXEC].max_bytes) == (10 * bus.DAY_S,
                                                                                            64 * bus.MB)
    assert infos[f"KV_{subjects.KV_CONTROL}"].max_bytes == 4 * bus.MB

    await bus.declare(fresh_js, Retention(retention_exec_mb=32, retention_control_mb=8, retention_control_history=4))

    exec_stream = (await fresh_js.stream_info(subjects.STREAM_EXEC)).config
    control = (await fresh_js.stream_info(f"KV_{subjects.KV_CONTROL}")).config
    assert exec_stream.max_bytes == 32 * bus.MB and exec_stream.max_age == 365 * bus.DAY_S
    assert (control.max_bytes, control.max_msgs_per_subject) == (8 * bus.MB, 4)


def test_retention_when_read_from_environment_then_typed_and_a_non_positive_limit_refused() -> None:
    retention = load_settings(Retention, {"QMP_RETENTION_RISK_DAYS": "7", "QMP_RETENTION_RISK_MB": "100"})
    assert (retention.retention_risk_days, retention.retention_risk_mb) == (7.0, 100)
    with pytest.raises(ValueError, match="QMP_RETENTION_DLQ_MB must be positive"):
        load_settings(Retention, {"QMP_RETENTION_DLQ_MB": "0"})


async def test_stop_watch_when_its_caller_is_cancelled_meanwhile_then_the_caller_ends_cancelled() -> None:
    # A guard renewing a watch is stopped while it waits for the old consumer: it must end, not swallow it.
    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)
            raise

    consumer = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    caller = asyncio.create_task(bus.stop_watch(None, consumer))
    await asyncio.sleep(0.05)  # the caller waits for the consumer to end
    caller.cancel()

    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait({consumer})
    assert consumer.cancelled()


async def test_stop_watch_when_the_watcher_and_its_reader_never_stop_then_it_returns_all_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A full-suite run once hung 300 s stopping a control watch: a stop must never hang a shutdown.
    monkeypatch.setattr(bus, "STOP_WATCH_S", 0.1)
    gate = asyncio.Event()

    class Stuck:
        async def stop(self) -> None:
            await asyncio.sleep(10)

    async def deaf() -> None:
        while not gate.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue  # a reader that swallows its cancellation

    reader = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()

    await bus.stop_watch(Stuck(), reader)

    assert asyncio.get_running_loop().time() - started < 1.0 and not reader.done()
    gate.set()
    reader.cancel()
    await asyncio.wait({reader})

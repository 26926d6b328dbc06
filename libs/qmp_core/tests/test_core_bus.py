"""Bus helpers against a real nats-server: idempotent declaration, deduplicated publishes, dead letters."""

import asyncio
import json
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client

from qmp_core import bus, subjects
from qmp_core.clock import TestClock
from qmp_core.messages import DeadLetter, codec
from qmp_ops.runtime.nats_server import NatsCredentials
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
    letters = await operator_nc.subscribe(subjects.dlq("risk"))
    await operator_nc.flush()
    payload = b"\xff" + b"x" * (bus.PAYLOAD_EXCERPT * 2)

    await bus.dead_letter(risk_nc.jetstream(), "risk", unique_id, "bad price", payload, TestClock(42))

    letter = codec(DeadLetter).decode((await letters.next_msg(timeout=5)).data)
    while letter.subject != unique_id:  # other tests' letters on the same subject
        letter = codec(DeadLetter).decode((await letters.next_msg(timeout=5)).data)
    assert (letter.service, letter.reason, letter.ts_event) == ("risk", "bad price", 42)
    assert len(letter.payload) == bus.PAYLOAD_EXCERPT and letter.payload.startswith("\ufffd")


def test_headers_for_when_msg_id_and_extra_given_then_both_present_and_no_id_without_one() -> None:
    headers = bus.headers_for("abc", {"X-Test": "1"})

    assert headers["Nats-Msg-Id"] == "abc" and headers["X-Test"] == "1"
    assert "Nats-Msg-Id" not in bus.headers_for(None)
    json.dumps(headers)  # plain strings only: a NATS header map


async def test_dead_letter_later_when_the_publish_fails_then_logged_and_the_caller_goes_on(
        nats_credentials: NatsCredentials, caplog: pytest.LogCaptureFixture) -> None:
    user, password = nats_credentials.for_user("risk")
    nc = await nats.connect(nats_credentials.url, **({"user": user, "password": password} if user else {}))
    js = nc.jetstream()
    await nc.close()  # every publish on it now fails
    tasks: set = set()

    bus.dead_letter_later(tasks, js, "risk", "$KV.qmp_control.x.risk", "invalid control entry", b"?", TestClock(1))
    await asyncio.gather(*tasks)

    assert not tasks
    assert any(record.message == "dead letter not published" for record in caplog.records)

"""The typed input every handler uses: a message decodes, or it is dead-lettered with the reason."""

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from qmp_core import subjects
from qmp_core.clock import TestClock
from qmp_core.messages import ClosePosition, DeadLetter, codec, encode
from qmp_core.service import Intake
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import connect_as

pytestmark = pytest.mark.integration


@pytest.fixture
async def risk_nc(nats_credentials: NatsCredentials) -> AsyncIterator[Client]:
    nc = await connect_as(nats_credentials, "risk")
    yield nc
    await nc.drain()


async def letters_for(nc: Client, subject: str, count: int) -> list[DeadLetter]:
    """Return the first `count` dead letters of risk about `subject`, read back from the DLQ stream.

    The stream, not a core subscription: a publish acknowledged by JetStream is stored, so reading it back
    cannot miss a letter the way a subscription racing the publish could.
    """
    sub = await nc.jetstream().subscribe(subjects.dlq("risk"), ordered_consumer=True,
                                         deliver_policy=DeliverPolicy.ALL)
    found: list[DeadLetter] = []
    try:
        while len(found) < count:
            letter = codec(DeadLetter).decode((await sub.next_msg(timeout=5)).data)
            if letter.subject == subject:
                found.append(letter)
    finally:
        await sub.unsubscribe()
    return found


async def test_decode_when_valid_then_message_and_nothing_dead_lettered(risk_nc: Client, unique_id: str) -> None:
    intake: Intake[ClosePosition] = Intake(ClosePosition, "risk", TestClock(1))
    close = ClosePosition(strategy=unique_id, symbol="AAA", quantity=-5.0, command_id="c1", reason="r", price=9.0,
                          entry_price=10.6, loss=0.15, ts_event=1)

    decoded = await intake.decode(risk_nc.jetstream(), unique_id, encode(close))

    assert decoded == close
    assert intake.dead_letters == 0


async def test_decode_when_wrong_type_then_none_and_dead_letter_names_the_type_and_the_field(
        risk_nc: Client, operator_nc: Client, unique_id: str) -> None:
    intake: Intake[ClosePosition] = Intake(ClosePosition, "risk", TestClock(7))
    data = b'{"strategy": "s", "symbol": "AAA", "quantity": "lots"}'

    message, reason = await intake.decode_request(risk_nc.jetstream(), unique_id, data)

    assert message is None and intake.dead_letters == 1
    assert reason.startswith("invalid ClosePosition:") and "quantity" in reason
    [letter] = await letters_for(operator_nc, unique_id, 1)
    assert (letter.reason, letter.payload, letter.ts_event) == (reason, data.decode(), 7)


async def test_reject_when_decoded_but_unusable_then_dead_lettered_with_the_given_reason(
        risk_nc: Client, operator_nc: Client, unique_id: str) -> None:
    intake: Intake[ClosePosition] = Intake(ClosePosition, "risk", TestClock(1), what="stop-loss command")

    await intake.reject(risk_nc.jetstream(), unique_id, "for another strategy", b"{}")
    _, reason = await intake.decode_request(risk_nc.jetstream(), unique_id, b"[")

    received = [letter.reason for letter in await letters_for(operator_nc, unique_id, 2)]
    assert received == ["for another strategy", reason]  # in the order they were published
    assert reason.startswith("invalid stop-loss command:")
    assert intake.dead_letters == 2

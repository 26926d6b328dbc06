"""The typed input every handler uses: a message decodes, or it is dead-lettered with the reason."""

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from qmp_core import subjects
from qmp_core.clock import TestClock
from qmp_core.messages import ClosePosition, DeadLetter, codec, encode
from qmp_core.service import MAX_DELIVER, MAX_FAILURES, Durable, Intake, Liveness
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


# ---------------------------------------------------------------- Durable: retried, never dropped
def stand_in(subject: str, data: bytes, delivered: int = 1, seq: int = 1) -> SimpleNamespace:
    """A message as FastStream hands it over: the handler wrapper reads only these attributes."""
    metadata = SimpleNamespace(num_delivered=delivered, sequence=SimpleNamespace(stream=seq), stream="S",
                               consumer="c")
    return SimpleNamespace(raw_message=SimpleNamespace(subject=subject, data=data, reply="", metadata=metadata))


async def no_wait(_: float) -> None:
    return None


async def test_durable_when_dependency_down_then_retried_until_handled_and_health_degraded_meanwhile(
        risk_nc: Client) -> None:
    liveness = Liveness()
    liveness.ready()
    durable = Durable("risk", TestClock(1), liveness, risk_nc.jetstream, sleep=no_wait)
    seen: list[str] = []

    async def handle() -> None:
        seen.append(liveness.status())
        if len(seen) < 4:
            raise ConnectionRefusedError("database down")

    await durable.handle(stand_in("qmp.md.x.bars", b"{}"), handle, "market data")  # type: ignore[arg-type]

    assert seen == ["ok", "degraded", "degraded", "degraded"]
    assert liveness.status() == "ok" and liveness.handled == 1 and liveness.retries == 3


async def test_durable_when_handler_keeps_failing_on_the_input_then_dead_lettered_after_three_tries(
        risk_nc: Client, operator_nc: Client, unique_id: str) -> None:
    liveness = Liveness()
    durable = Durable("risk", TestClock(1), liveness, risk_nc.jetstream, sleep=no_wait)
    calls = 0

    async def handle() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("a bug")

    await durable.handle(stand_in(unique_id, b"payload", seq=7), handle, "market data")  # type: ignore[arg-type]

    assert calls == MAX_FAILURES and liveness.handled == 0 and liveness.retrying == {}
    [letter] = await letters_for(operator_nc, unique_id, 1)
    assert letter.reason.startswith(f"market data failed {MAX_FAILURES} times: KeyError")


async def test_durable_when_delivered_too_often_then_dead_lettered_without_calling_the_handler(
        risk_nc: Client, operator_nc: Client, unique_id: str) -> None:
    liveness = Liveness()
    durable = Durable("risk", TestClock(1), liveness, risk_nc.jetstream, sleep=no_wait)

    async def handle() -> None:
        raise AssertionError("must not be called")

    await durable.handle(stand_in(unique_id, b"payload", delivered=MAX_DELIVER + 1),  # type: ignore[arg-type]
                         handle, "portfolio snapshot")

    [letter] = await letters_for(operator_nc, unique_id, 1)
    assert "delivered 6 times" in letter.reason and liveness.crash_letters == 1


async def test_durable_when_a_handled_message_is_delivered_again_then_not_handled_twice(risk_nc: Client) -> None:
    liveness = Liveness()
    durable = Durable("risk", TestClock(1), liveness, risk_nc.jetstream, sleep=no_wait)
    handled: list[int] = []

    for seq, delivered in [(1, 1), (2, 1), (1, 2), (3, 1), (2, 2)]:  # 1 and 2 again: acks lost in a server restart
        async def handle(seq: int = seq) -> None:
            handled.append(seq)
        await durable.handle(stand_in("qmp.md.x.bars", b"{}", delivered, seq), handle,  # type: ignore[arg-type]
                             "market data")

    assert handled == [1, 2, 3]
    assert liveness.redeliveries_skipped == 2 and liveness.detail()["redeliveries_skipped"] == 2


async def test_durable_when_a_failed_message_is_delivered_again_then_handled_again(risk_nc: Client) -> None:
    liveness = Liveness()
    liveness.ready()
    durable = Durable("risk", TestClock(1), liveness, risk_nc.jetstream, sleep=no_wait)
    calls = 0

    async def handle() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncio.CancelledError  # the service stopped while handling it: nothing was done

    with pytest.raises(asyncio.CancelledError):
        await durable.handle(stand_in("qmp.md.x.bars", b"{}", 1, 9), handle, "market data")  # type: ignore[arg-type]
    await durable.handle(stand_in("qmp.md.x.bars", b"{}", 2, 9), handle, "market data")  # type: ignore[arg-type]

    assert calls == 2 and liveness.redeliveries_skipped == 0


async def test_liveness_when_a_watched_loop_dies_then_failing_and_a_loop_that_may_end_is_not() -> None:
    liveness = Liveness()
    liveness.ready()

    async def crash() -> None:
        raise RuntimeError("loop died")

    async def finish() -> None:
        return None

    ended = asyncio.create_task(finish())
    await ended
    liveness.watch("source", ended, may_end=True)
    assert liveness.status() == "ok"
    died = asyncio.create_task(crash())
    await asyncio.gather(died, return_exceptions=True)
    liveness.watch("checks", died)
    assert liveness.status() == "failing" and "loop died" in liveness.dead_loops()["checks"]

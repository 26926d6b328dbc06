"""The Alpaca adapter: the real alpaca-py SDK against a fake Alpaca trading API on loopback."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
from execution_testkit import (
    PRICES,
    SID,
    FixedWeights,
    bar,
    config,
    engine_with,
    events_of,
)

from qmp_core.messages import OrderAccepted
from qmp_execution.adapters import BrokerAdapter, submit_all
from qmp_execution.alpaca import AlpacaAdapter, AlpacaConfig, config_from, order_id_of
from qmp_execution.app import ExecutionSettings, alpaca_adapter
from qmp_execution.engine.broker import BrokerOrder, OrderAck, broker_order
from qmp_execution.rest import BrokerUnavailable
from qmp_venues.credentials import CredentialsError
from qmp_venues.fake_alpaca import FakeAlpaca


@pytest.fixture
async def venue() -> AsyncIterator[FakeAlpaca]:
    fake = FakeAlpaca(prices={"AAPL": 190.5, "MSFT": 410.25, "AAA": 50.02, "BBB": 199.9})
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def adapter_for(fake: FakeAlpaca, **changes: float | str) -> AlpacaAdapter:
    quick = {"fill_wait_s": 1.0, "poll_s": 0.01, "retries": 2, "retry_wait_s": 0}
    return AlpacaAdapter(AlpacaConfig(api_key=fake.key, secret_key=fake.secret, url=fake.url, **{**quick, **changes}))


def order(order_id: str = "mom-1700000000-AAPL-1", symbol: str = "AAPL", side: str = "BUY",
          quantity: float = 10.0) -> BrokerOrder:
    return BrokerOrder(order_id=order_id, strategy="mom", symbol=symbol, side=side,  # type: ignore[arg-type]
                       quantity=quantity, price=190.0, ts_event=1)


async def test_submit_when_market_order_fills_then_ack_carries_the_fill_and_the_client_order_id_is_qmps(
        venue: FakeAlpaca) -> None:
    adapter = adapter_for(venue)
    assert isinstance(adapter, BrokerAdapter)

    ack = await adapter.submit(order())

    assert (ack.status, ack.order_id, ack.endpoint) == ("filled", "mom-1700000000-AAPL-1", "alpaca")
    assert [(f.quantity, f.price) for f in ack.fills] == [(10.0, 190.5)]
    assert list(venue.by_client_id) == ["mom.1700000000-AAPL-1"]  # the strategy, a dot, the rest of QMP's id
    assert order_id_of("mom.1700000000-AAPL-1") == "mom-1700000000-AAPL-1"


async def test_submit_when_sent_again_after_a_restart_then_venue_keeps_one_order(venue: FakeAlpaca) -> None:
    first = await adapter_for(venue).submit(order())
    restarted = adapter_for(venue)  # a new process: it knows nothing of what was sent

    again = await restarted.submit(order())

    assert venue.order_posts == 2 and len(venue.orders) == 1  # Alpaca refused the second: the id is taken
    assert (restarted.sent, restarted.found) == (0, 1)
    assert again == first


async def test_submit_when_venue_refuses_then_rejected_with_its_reason_and_others_go_through(
        venue: FakeAlpaca) -> None:
    venue.behaviour.refuse_symbols = {"MSFT"}
    acks = await submit_all(adapter_for(venue), [order("a-1"), order("a-2", symbol="MSFT")])

    assert [a.status for a in acks] == ["filled", "rejected"]
    assert "insufficient buying power" in acks[1].reason and "403" in acks[1].reason


async def test_submit_when_rate_limited_briefly_then_retried_by_the_sdk_and_taken_once(venue: FakeAlpaca) -> None:
    venue.behaviour.rate_limited = 2

    ack = await adapter_for(venue).submit(order())

    assert ack.status == "filled" and len(venue.orders) == 1


async def test_submit_when_rate_limit_outlasts_retries_then_unavailable_not_rejected(venue: FakeAlpaca) -> None:
    venue.behaviour.rate_limited = 100

    with pytest.raises(BrokerUnavailable, match="429"):
        await adapter_for(venue).submit(order())
    assert venue.orders == {}


async def test_submit_when_partly_filled_then_partial_ack_with_quantity_so_far(venue: FakeAlpaca) -> None:
    venue.behaviour.fill_ratio = 0.4

    ack = await adapter_for(venue, fill_wait_s=0.1).submit(order(quantity=25.0))

    assert ack.status == "partially_filled" and [f.quantity for f in ack.fills] == [10.0]


async def test_cancel_when_order_still_working_then_canceled_and_when_filled_then_reported_filled(
        venue: FakeAlpaca) -> None:
    venue.behaviour.fill_delay_s = 60.0
    adapter = adapter_for(venue, fill_wait_s=0.05)
    working = await adapter.submit(order("w-1"))
    assert working.status == "accepted" and working.fills == []

    assert (await adapter.cancel(order("w-1"))).status == "canceled"
    await adapter.submit(order("w-2"))
    venue.fill_all()
    late = await adapter.cancel(order("w-2"))  # filled meanwhile: Alpaca says not cancelable
    assert late.status == "filled" and late.fills[0].quantity == 10.0
    assert (await adapter.cancel(order("never-sent"))).status == "unknown"


async def test_cancel_many_when_some_open_some_ended_then_open_ones_canceled_in_one_listing(
        venue: FakeAlpaca) -> None:
    venue.behaviour.fill_delay_s = 60.0
    adapter = adapter_for(venue, fill_wait_s=0.0)
    for order_id in ("mom-1", "mom-2", "mom-3"):
        await adapter.submit(order(order_id))
    venue.place("other-1", "MSFT", 1.0)
    venue.fill_all()  # everything open fills...
    venue.behaviour.fill_delay_s = 60.0
    await adapter.submit(order("mom-4"))  # ...but this one, sent after
    await adapter.submit(order("mom-5"))
    await adapter.submit(msgspec.structs.replace(order("mom-2-7-AAPL"), strategy="mom-2"))  # another strategy's
    before = venue.requests

    listed = await adapter.open_orders("mom")
    answers = await adapter.cancel_many([order("mom-4"), order("mom-1"), order("mom-5")])

    assert [(o.order_id, o.strategy, o.symbol, o.side, o.quantity) for o in listed] == [
        ("mom-4", "mom", "AAPL", "BUY", 10.0), ("mom-5", "mom", "AAPL", "BUY", 10.0)]
    assert [(a.order_id, a.status) for a in answers] == [("mom-4", "canceled"), ("mom-1", "unknown"),
                                                          ("mom-5", "canceled")]
    assert venue.requests - before == 1 + 1 + 2  # a listing each, then one DELETE per open order
    assert venue.open_orders() == ["mom-2.7-AAPL"]  # `mom-2`'s order is not `mom`'s, dash or not


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


async def test_trade_updates_when_orders_fill_and_cancel_then_each_answer_arrives_and_after_a_disconnect_too(
        venue: FakeAlpaca) -> None:
    venue.behaviour.fill_delay_s = 3600.0
    adapter = adapter_for(venue, fill_wait_s=0.0, stream_url=venue.stream_url)
    for order_id in ("u-1", "u-2", "u-3"):
        await adapter.submit(order(order_id))
    answers: list[OrderAck] = []

    async def on_answer(answer: OrderAck) -> None:
        answers.append(answer)

    following = asyncio.create_task(adapter.trade_updates(on_answer))
    try:
        await wait_until(lambda: len(venue._listeners) == 1)
        venue.behaviour.fill_ratio = 0.4
        venue.fill_all()  # partial fills of all three
        await wait_until(lambda: len(answers) == 3)
        await adapter.cancel(order("u-3"))
        await wait_until(lambda: len(answers) == 4)
        await venue.drop_streams()  # a disconnect: the SDK connects again by itself
        await wait_until(lambda: len(venue._listeners) == 1)
        venue.behaviour.fill_ratio = 1.0
        venue.fill_all()
        await wait_until(lambda: len(answers) == 6)
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following

    assert [(a.order_id, a.status) for a in answers[:3]] == [(f"u-{i}", "partially_filled") for i in (1, 2, 3)]
    assert all(sum(f.quantity for f in a.fills) == pytest.approx(4.0) for a in answers[:3])
    assert (answers[3].order_id, answers[3].status) == ("u-3", "canceled")  # the rest of a partly filled one
    assert sum(f.quantity for f in answers[3].fills) == pytest.approx(4.0)
    assert sorted((a.order_id, a.status, a.fills[0].quantity) for a in answers[4:]) == [
        ("u-1", "filled", 10.0), ("u-2", "filled", 10.0)]


async def test_trade_updates_when_credentials_wrong_then_nothing_arrives_and_cancel_ends_it(
        venue: FakeAlpaca) -> None:
    wrong = AlpacaAdapter(AlpacaConfig(api_key=venue.key, secret_key="nope", url=venue.url,
                                       stream_url=venue.stream_url))
    answers: list[OrderAck] = []

    async def on_answer(answer: OrderAck) -> None:
        answers.append(answer)

    following = asyncio.create_task(wrong.trade_updates(on_answer))
    await asyncio.sleep(0.5)
    await adapter_for(venue).submit(order())  # fills at once: pushed to nobody
    following.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await following

    assert answers == [] and venue._listeners == set()


async def test_positions_and_account_when_venue_holds_long_and_short_then_signed_quantities_and_equity(
        venue: FakeAlpaca) -> None:
    adapter = adapter_for(venue)
    await adapter.submit(order("p-1", quantity=10.0))
    await adapter.submit(order("p-2", symbol="MSFT", side="SELL", quantity=4.0))
    venue.set_position("TSLA", 3.0)  # changed by hand at the broker

    positions = await adapter.positions()
    account = await adapter.account()

    assert positions == {"AAPL": 10.0, "MSFT": -4.0, "TSLA": 3.0}
    assert account.cash == pytest.approx(100_000.0 - 10 * 190.5 + 4 * 410.25)
    assert account.equity == pytest.approx(account.cash + 10 * 190.5 - 4 * 410.25 + 3 * 100.0)
    assert account.currency == "USD"


async def test_adapter_when_credentials_wrong_then_unavailable_saying_so(venue: FakeAlpaca) -> None:
    wrong = AlpacaAdapter(AlpacaConfig(api_key="nope", secret_key="nope", url=venue.url))
    with pytest.raises(BrokerUnavailable, match="401"):
        await wrong.positions()


async def test_engine_when_orders_routed_to_alpaca_then_fills_booked_at_venue_prices_and_books_agree(
        venue: FakeAlpaca) -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.3, "BBB": 0.3})}, config(broker="external"))
    engine.process(bar(0, PRICES))
    result = engine.process(bar(1, PRICES)).results[SID]
    accepted = events_of(result, OrderAccepted)
    orders = [broker_order(SID, e) for e in accepted]
    adapter = adapter_for(venue)

    booked = engine.apply_acks(SID, await submit_all(adapter, orders))

    assert sorted((f.symbol, f.price) for f in booked.fills) == [("AAA", 50.02), ("BBB", 199.9)]
    assert booked.snapshot.working == []
    book = dict(zip(booked.snapshot.symbols, booked.snapshot.quantities, strict=True))
    assert {s: q for s, q in book.items() if q} == pytest.approx(await adapter.positions())


def test_config_and_settings_when_printed_then_secrets_masked() -> None:
    text = repr(AlpacaConfig(api_key="AKXXXX", secret_key="very-secret"))
    assert "very-secret" not in text and "AKXXXX" not in text
    settings = ExecutionSettings(strategies="m=a:B", broker="alpaca", alpaca_api_key="AKXXXX",
                                 alpaca_secret_key="very-secret", nats_password="pw-123")
    shown = f"{settings!r} {settings}"
    assert "very-secret" not in shown and "AKXXXX" not in shown and "pw-123" not in shown
    assert "alpaca_secret_key=***" in shown and "broker='alpaca'" in shown


def test_config_when_another_trading_url_then_the_stream_moves_with_it_unless_given_its_own() -> None:
    def stream(url: str, stream_url: str = "") -> str:
        return config_from("k", "s", "", True, url, 1.0, stream_url).stream_url

    assert stream("") == ""  # the SDK's own: Alpaca's paper or live host
    assert stream("https://proxy.example:8443/") == "wss://proxy.example:8443/stream"
    assert stream("http://127.0.0.1:5001") == "ws://127.0.0.1:5001/stream"
    assert stream("http://127.0.0.1:5001", "ws://127.0.0.1:6001/stream") == "ws://127.0.0.1:6001/stream"


def test_settings_when_alpaca_chosen_without_credentials_then_start_fails_saying_what_to_set() -> None:
    with pytest.raises(CredentialsError, match="QMP_ALPACA_SECRETS_FILE"):
        alpaca_adapter(ExecutionSettings(strategies="m=a:B", broker="alpaca"))


async def test_venue_check_when_the_venue_raises_anything_then_the_operator_gets_a_reply_saying_so() -> None:
    from qmp_core.clock import TestClock
    from qmp_execution.handlers.broker import BrokerCommands

    class Failing:
        async def check_venue(self) -> None:
            raise RuntimeError("the SDK could not parse the account")

    reply = await BrokerCommands("alpaca", TestClock(1), venue=lambda: Failing()).handle(b'{"command": "check"}')

    assert not reply.accepted and "could not parse the account" in reply.reason and reply.broker == "alpaca"

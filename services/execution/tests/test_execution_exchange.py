"""The exchange adapter: the real ccxt library (its `binance` exchange) against a fake Binance Spot API on
loopback that answers with the shapes Binance documents."""

from collections.abc import AsyncIterator

import pytest
from execution_testkit import SID, FixedWeights, bar, config, engine_with, events_of

from qmp_core.messages import OrderAccepted
from qmp_execution.adapters import BrokerAdapter, submit_all
from qmp_execution.app import ExecutionSettings, exchange_adapter
from qmp_execution.engine.broker import BrokerOrder, broker_order
from qmp_execution.exchange import ExchangeAdapter, ExchangeConfig, client_order_id, is_client_order_id
from qmp_execution.rest import BrokerUnavailable
from qmp_venues.credentials import CredentialsError
from qmp_venues.fake_exchange import FakeExchange

BTC, ETH = "BTC/USDT", "ETH/USDT"


@pytest.fixture
async def venue() -> AsyncIterator[FakeExchange]:
    fake = FakeExchange(balances={"USDT": 100_000.0, "ETH": 4.0}, prices={"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0})
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def adapters() -> AsyncIterator[list[ExchangeAdapter]]:
    made: list[ExchangeAdapter] = []
    yield made
    for adapter in made:
        await adapter.close()


@pytest.fixture
def adapter_for(adapters: list[ExchangeAdapter]):  # type: ignore[no-untyped-def]
    def make(fake: FakeExchange, **changes: object) -> ExchangeAdapter:
        quick: dict[str, object] = {"fill_wait_s": 1.0, "poll_s": 0.01, "retries": 2, "retry_wait_s": 0.01,
                                    "rate_limit_ms": 1.0}
        adapter = ExchangeAdapter(ExchangeConfig(api_key=fake.key, secret_key=fake.secret, url=fake.url,
                                                 **{**quick, **changes}))  # type: ignore[arg-type]
        adapters.append(adapter)
        return adapter

    return make


def order(order_id: str = "mom-1700000000000000000-BTC/USDT", symbol: str = BTC, side: str = "BUY",
          quantity: float = 0.5, strategy: str = "mom") -> BrokerOrder:
    return BrokerOrder(order_id=order_id, strategy=strategy, symbol=symbol, side=side,  # type: ignore[arg-type]
                       quantity=quantity, price=60_000.0, ts_event=1)


async def test_submit_when_market_order_fills_then_each_trade_with_its_fee_under_a_short_stable_client_id(
        venue: FakeExchange, adapter_for) -> None:  # type: ignore[no-untyped-def]
    adapter = adapter_for(venue)
    assert isinstance(adapter, BrokerAdapter)

    ack = await adapter.submit(order())

    assert (ack.status, ack.order_id, ack.endpoint) == ("filled", order().order_id, "binance")
    assert [(f.quantity, f.price, f.fee) for f in ack.fills] == [(0.5, 60_000.0, pytest.approx(30.0))]
    [placed] = venue.orders.values()
    assert placed.client_order_id == client_order_id(order()) and is_client_order_id(placed.client_order_id)
    assert len(placed.client_order_id) <= 32 and placed.client_order_id.isalnum()  # OKX's rule, the strictest
    assert venue.balances["BTC"] == 0.5


async def test_submit_when_sent_again_after_a_restart_then_the_exchange_keeps_one_order(
        venue: FakeExchange, adapter_for) -> None:  # type: ignore[no-untyped-def]
    first = await adapter_for(venue).submit(order())
    restarted = adapter_for(venue)  # a new process: it knows nothing of what was sent

    again = await restarted.submit(order())

    # Binance would take the same client order id again once the first order is closed: it is never asked to.
    assert venue.order_posts == 1 and len(venue.orders) == 1
    assert (restarted.sent, restarted.found) == (0, 1)
    assert (again.status, sum(f.quantity for f in again.fills)) == (first.status, 0.5)


async def test_submit_when_the_answer_is_lost_then_the_order_is_found_not_sent_twice(
        venue: FakeExchange, adapter_for) -> None:  # type: ignore[no-untyped-def]
    venue.behaviour.lose_answers = 1  # 503 -1007: "execution status unknown"
    adapter = adapter_for(venue)

    ack = await adapter.submit(order())

    assert ack.status == "filled" and venue.order_posts == 1 and len(venue.orders) == 1
    assert (adapter.sent, adapter.found) == (0, 1)


async def test_submit_when_exchange_refuses_then_rejected_with_its_reason_and_others_go_through(
        venue: FakeExchange, adapter_for) -> None:  # type: ignore[no-untyped-def]
    acks = await submit_all(adapter_for(venue), [
        order("a-1"), order("a-2", symbol=ETH, side="SELL", quantity=10.0),  # holds 4 ETH: spot cannot short
        order("a-3", symbol="XRP/USDT")])

    assert [a.status for a in acks] == ["filled", "rejected", "rejected"]
    assert acks[1].reason == "binance refused the order: Account has insufficient balance for requested action."
    assert "no market 'XRP/USDT'" in acks[2].reason
    assert venue.balances["ETH"] == 4.0


async def test_submit_when_rate_limited_briefly_then_retried_and_taken_once(
        venue: FakeExchange, adapter_for) -> None:  # type: ignore[no-untyped-def]
    adapter = adapter_for(venue)
    await adapter.positions()  # markets loaded
    venue.behaviour.rate_limited = 2

    ack = await adapter.submit(order())

    assert ack.status == "filled" and len(venue.orders) == 1


async def test_submit_when_rate_limit_outlasts_retries_then_unavailable_not_rejected(
        venue: FakeExchange, adapter_for) -> None:  # type: ignore[no-untyped-def]
    venue.behaviour.rate_limited = 100

    with pytest.raises(BrokerUnavailable, match="rate limit"):
        await adapter_for(venue).submit(order())
    assert venue.orders == {}


async def test_submit_when_partly_filled_then_partial_ack_and_later_status_has_the_rest(
        venue: FakeExchange, adapter_for) -> None:  # type: ignore[no-untyped-def]
    venue.behaviour.fill_ratio = 0.4
    adapter = adapter_for(venue, fill_wait_s=0.05)

    ack = await adapter.submit(order(quantity=1.0))
    venue.behaviour.fill_ratio = 1.0
    later = await adapter.status(order(quantity=1.0))

    assert ack.status == "partially_filled" and [f.quantity for f in ack.fills] == [pytest.approx(0.4)]
    assert later.status == "filled" and sum(f.quantity for f in later.fills) == pytest.approx(1.0)


async def test_cancel_when_order_still_working_then_canceled_and_when_filled_then_reported_filled(
        venue: FakeExchange, adapter_for) -> None:  # type: ignore[no-untyped-def]
    venue.behaviour.fill_delay_s = 60.0
    adapter = adapter_for(venue, fill_wait_s=0.05)
    working = await adapter.submit(order("w-1"))
    assert working.status == "accepted" and working.fills == []

    assert (await adapter.cancel(order("w-1"))).status == "canceled"
    await adapter.submit(order("w-2"))
    venue.fill_all()
    late = await adapter.cancel(order("w-2"))  # filled meanwhile: the exchange answers -2011
    assert late.status == "filled" and late.fills[0].quantity == 0.5
    assert (await adapter.cancel(order("never-sent"))).status == "unknown"


async def test_open_orders_after_a_restart_then_the_strategys_only_and_cancel_many_ends_them(
        venue: FakeExchange, adapter_for) -> None:  # type: ignore[no-untyped-def]
    venue.behaviour.fill_delay_s = 60.0
    before = adapter_for(venue, fill_wait_s=0.0)
    for i in range(3):
        await before.submit(order(f"mom-{i}-BTC/USDT"))
    await before.submit(order("rev-1-BTC/USDT", strategy="rev"))
    venue.place("by-hand-1", "BTCUSDT", 0.1)
    restarted = adapter_for(venue, fill_wait_s=0.0)  # knows none of them

    listed = await restarted.open_orders("mom")
    answers = await restarted.cancel_many([*listed, order("mom-9-BTC/USDT")])

    assert len(listed) == 3 and all(is_client_order_id(o.order_id) and o.symbol == BTC for o in listed)
    assert [a.status for a in answers] == ["canceled"] * 3 + ["unknown"]
    assert sorted(venue.open_orders()) == sorted(["by-hand-1", client_order_id(order("rev-1-BTC/USDT",
                                                                                        strategy="rev"))])
    assert await restarted.open_orders("mom") == []


async def test_positions_and_account_when_the_exchange_holds_coins_then_symbols_and_equity_in_quote(
        venue: FakeExchange, adapter_for) -> None:  # type: ignore[no-untyped-def]
    adapter = adapter_for(venue)
    await adapter.submit(order(quantity=0.5))

    positions = await adapter.positions()
    account = await adapter.account()

    assert positions == {BTC: 0.5, ETH: 4.0}
    cash = 100_000.0 - 0.5 * 60_000.0 * 1.001
    assert (account.cash, account.currency, account.buying_power) == (pytest.approx(cash), "USDT", pytest.approx(cash))
    assert account.equity == pytest.approx(cash + 0.5 * 60_000.0 + 4.0 * 3_000.0)


async def test_adapter_when_secret_wrong_then_unavailable_saying_so(venue: FakeExchange, adapter_for) -> None:  # type: ignore[no-untyped-def]
    wrong = adapter_for(venue)
    wrong.exchange.secret = "not-the-secret"

    with pytest.raises(BrokerUnavailable, match="Signature for this request is not valid"):
        await wrong.positions()
    with pytest.raises(BrokerUnavailable):
        await wrong.submit(order())
    assert venue.orders == {}


async def test_engine_when_orders_routed_to_the_exchange_then_fills_booked_at_its_prices_and_books_agree(
        venue: FakeExchange, adapter_for) -> None:  # type: ignore[no-untyped-def]
    prices = {BTC: 60_000.0, ETH: 3_000.0}
    venue.balances.update({"ETH": 0.0, "USDT": 2_000_000.0})
    engine = engine_with({SID: FixedWeights({BTC: 0.3, ETH: 0.3})}, config(broker="external"))
    engine.process(bar(0, prices))
    venue.prices = {"BTCUSDT": 60_100.0, "ETHUSDT": 2_990.0}
    accepted = events_of(engine.process(bar(1, prices)).results[SID], OrderAccepted)
    adapter = adapter_for(venue)

    booked = engine.apply_acks(SID, await submit_all(adapter, [broker_order(SID, e) for e in accepted]))

    assert sorted((f.symbol, f.price) for f in booked.fills) == [(BTC, 60_100.0), (ETH, 2_990.0)]
    fees = {f.symbol: f.fee for f in booked.fills}
    assert fees[BTC] == pytest.approx(0.001 * 60_100.0 * next(f.quantity for f in booked.fills if f.symbol == BTC))
    book = dict(zip(booked.snapshot.symbols, booked.snapshot.quantities, strict=True))
    assert {s: q for s, q in book.items() if q} == pytest.approx(await adapter.positions())


def test_settings_when_exchange_chosen_without_credentials_then_start_fails_saying_what_to_set() -> None:
    with pytest.raises(CredentialsError, match="QMP_EXCHANGE_SECRETS_FILE"):
        exchange_adapter(ExecutionSettings(strategies="m=a:B", broker="exchange"))


def test_config_and_settings_when_printed_then_secrets_masked() -> None:
    text = repr(ExchangeConfig(api_key="KEY-123", secret_key="very-secret"))
    settings = ExecutionSettings(strategies="m=a:B", broker="exchange", exchange_api_key="KEY-123",
                                 exchange_secret_key="very-secret")
    shown = f"{text} {settings!r} {settings}"
    assert "very-secret" not in shown and "KEY-123" not in shown and "exchange_secret_key=***" in shown


def test_make_exchange_when_ccxt_does_not_know_it_then_clear_error() -> None:
    with pytest.raises(ValueError, match="ccxt knows no exchange 'nowhere'"):
        ExchangeAdapter(ExchangeConfig(exchange="nowhere", api_key="k", secret_key="s"))

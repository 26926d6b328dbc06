"""Alpaca behind `BrokerAdapter`, through Alpaca's official SDK (alpaca-py).

Orders go out as market orders, day orders, under a `client_order_id` made of QMP's order id
(`client_order_id`: the strategy's id, a dot, the rest of the order id). Alpaca refuses a second order with
the same one, so a retry, or a restart that sends an order again, finds the
order it already has (by client order id) instead of making a second one. A submit waits up to
`fill_wait_s` for the order to fill (polling its status) and answers with what Alpaca reports then: the
filled quantity at its average price, or the order still working (what fills later is booked by
reconciliation, below). Alpaca's answers map to QMP's as: filled and partially_filled → the same, with one
fill of the quantity filled so far; new, accepted, pending_new and the other working states → accepted;
canceled, expired, done_for_day, replaced → canceled; rejected and suspended → rejected.

`status` answers with an order's fills so far, for reconciliation: before each batch, execution asks for
every order still working in its book, and every order it withdrew that Alpaca has not been seen to end
(a cancel can cross a fill), and books what Alpaca filled beyond what is booked (`StrategyHost.reconcile`).
Between batches, `trade_updates` follows Alpaca's trade-updates stream (the SDK's TradingStream, in a
thread of its own): each fill, partial fill, cancel, expiry or rejection is the order's answer as Alpaca
has it then, booked at once the same way. The SDK reconnects by itself; what happened while it was away
is booked by the status questions above, so nothing depends on the stream being whole.

Errors: a 4xx other than 401 and 429 is Alpaca refusing the order (an OrderAck `rejected` with Alpaca's
message: buying power, an unknown symbol, a closed market); refused credentials (401), a rate limit (429),
5xx and a connection that fails are the venue being unavailable (`BrokerUnavailable`), after the SDK's own
retries of 429 and 504 (`retries`, `retry_wait_s`).

The SDK is synchronous (requests): each call runs in a worker thread, at most `max_concurrency` at once.
Credentials come from settings or a secrets file (`load_credentials`), never from a message, and are
never logged.
"""

import asyncio
import contextlib
import json
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar

import requests
from msgspec import Meta, Struct

with warnings.catch_warnings():
    # alpaca-py's trading stream imports `websockets.legacy`, which warns on import since websockets 14.
    warnings.simplefilter("ignore", DeprecationWarning)
    from alpaca.common.exceptions import APIError
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
    from alpaca.trading.models import Order
    from alpaca.trading.requests import GetOrdersRequest, MarketOrderRequest
    from alpaca.trading.stream import TradingStream

from qmp_execution.engine.broker import Account, AckStatus, BrokerFill, BrokerOrder, OrderAck
from qmp_execution.rest import BrokerUnavailable
from qmp_venues.credentials import load_credentials

T = TypeVar("T")

DUPLICATE_CLIENT_ORDER_ID = 40010001  # Alpaca's error code: "client_order_id must be unique"
WORKING = {"new", "accepted", "pending_new", "accepted_for_bidding", "calculated", "pending_cancel",
           "pending_replace", "held", "stopped"}
CANCELED = {"canceled", "expired", "done_for_day", "replaced"}
REJECTED = {"rejected", "suspended"}
UPDATES = {"fill", "partial_fill", "canceled", "expired", "rejected", "done_for_day", "replaced"}  # answers to book


class AlpacaConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    api_key: str
    secret_key: str
    paper: bool = True  # Alpaca's paper endpoint (the rollout's paper phase); False: the live endpoint
    url: str = ""  # another base URL for the trading API (a fake venue in tests)
    stream_url: str = ""  # another URL for the trade-updates stream (a fake venue in tests)
    fill_wait_s: Annotated[float, Meta(ge=0.0)] = 2.0
    poll_s: Annotated[float, Meta(gt=0.0)] = 0.05
    max_concurrency: Annotated[int, Meta(ge=1)] = 8
    retries: Annotated[int, Meta(ge=0)] = 3  # the SDK's own retries of 429 and 504
    retry_wait_s: Annotated[int, Meta(ge=0)] = 1  # whole seconds: the SDK sleeps an int

    def __repr__(self) -> str:  # never print the secret, whoever prints the settings
        return f"AlpacaConfig(paper={self.paper}, url={self.url!r}, api_key=***, secret_key=***)"


def ack_of(order_id: str, order: Order) -> OrderAck:
    """Return QMP's answer for an Alpaca order as Alpaca reports it now."""
    status = _status(order)
    filled = float(order.filled_qty or 0.0)
    fills = []
    if filled > 0.0 and order.filled_avg_price is not None:
        fills = [BrokerFill(fill_id=f"{order_id}-alpaca", quantity=filled, price=float(order.filled_avg_price))]
    ack: AckStatus
    if status in ("filled", "partially_filled"):
        ack = status  # type: ignore[assignment]
    elif status in WORKING:
        ack = "accepted"
    elif status in CANCELED:
        ack = "canceled"
    elif status in REJECTED:
        ack = "rejected"
    else:
        ack = "unknown"
    return OrderAck(order_id=order_id, status=ack, fills=fills, reason="" if ack != "unknown" else status,
                    endpoint="alpaca")


class AlpacaAdapter:
    """The BrokerAdapter interface over alpaca-py's TradingClient."""

    name = "alpaca"

    def __init__(self, config: AlpacaConfig, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.config = config
        self.client = TradingClient(config.api_key, config.secret_key, paper=config.paper,
                                    url_override=config.url or None)
        # alpaca-py's RESTClient takes retry_attempts / retry_wait_seconds, but TradingClient does not pass
        # them on: its defaults (3 tries, 3 s apart, in a worker thread) are set here on what they configure.
        self.client._retry = config.retries
        self.client._retry_wait = config.retry_wait_s
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._sleep = sleep
        self.sent = 0  # orders Alpaca took
        self.found = 0  # orders Alpaca already had (a retry or a restart): not sent twice

    async def _call(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async with self._slots:
            try:
                return await asyncio.to_thread(call, *args, **kwargs)
            except requests.RequestException as error:
                raise BrokerUnavailable(f"alpaca unreachable: {error}") from error
            except APIError as error:
                if error.status_code is None or error.status_code in (401, 429) or error.status_code >= 500:
                    # 401: the credentials are refused, so no order can go until someone fixes them.
                    raise BrokerUnavailable(f"alpaca answered {error.status_code}: {_message(error)}") from error
                raise

    async def submit(self, order: BrokerOrder) -> OrderAck:
        request = MarketOrderRequest(symbol=order.symbol, qty=abs(order.quantity),
                                     side=OrderSide.BUY if order.side == "BUY" else OrderSide.SELL,
                                     time_in_force=TimeInForce.DAY, client_order_id=client_order_id(order))
        try:
            placed = await self._call(self.client.submit_order, request)
            self.sent += 1
        except APIError as error:
            if _code(error) != DUPLICATE_CLIENT_ORDER_ID:
                return OrderAck(order_id=order.order_id, status="rejected", endpoint=self.name,
                                reason=f"alpaca refused the order ({error.status_code}): {_message(error)}")
            placed = await self._call(self.client.get_order_by_client_id, client_order_id(order))
            self.found += 1
        return ack_of(order.order_id, await self._settle(placed))

    async def submit_many(self, orders: Sequence[BrokerOrder]) -> list[OrderAck]:
        """Submit concurrently (at most `max_concurrency` calls at once); acks in the order of `orders`."""
        return list(await asyncio.gather(*(self.submit(order) for order in orders)))

    async def _settle(self, order: Order) -> Order:
        """Poll the order until it is no longer working, or `fill_wait_s` has passed."""
        deadline = time.monotonic() + self.config.fill_wait_s
        while _status(order) in WORKING and time.monotonic() < deadline:
            await self._sleep(self.config.poll_s)
            order = await self._call(self.client.get_order_by_id, order.id)
        return order

    async def _find(self, sent: BrokerOrder) -> Order | None:
        """Return the order Alpaca holds under the order's client order id, or None if it has none."""
        try:
            return await self._call(self.client.get_order_by_client_id, client_order_id(sent))
        except APIError as error:
            if error.status_code == 404:
                return None
            raise BrokerUnavailable(f"alpaca answered {error.status_code}: {_message(error)}") from error

    def _unknown(self, order_id: str) -> OrderAck:
        return OrderAck(order_id=order_id, status="unknown", reason="alpaca has no such order", endpoint=self.name)

    async def status(self, sent: BrokerOrder) -> OrderAck:
        """Return the order as Alpaca reports it now: its fills so far (cumulative), or `unknown`."""
        order_id = sent.order_id
        order = await self._find(sent)
        return self._unknown(order_id) if order is None else ack_of(order_id, order)

    async def cancel(self, sent: BrokerOrder) -> OrderAck:
        order_id = sent.order_id
        order = await self._find(sent)
        if order is None:
            return self._unknown(order_id)
        if _status(order) in WORKING or _status(order) == "partially_filled":  # open: the rest can still fill
            try:
                await self._call(self.client.cancel_order_by_id, order.id)
            except APIError as error:  # 422: no longer cancelable (it filled meanwhile): report what it is
                if error.status_code != 422:
                    raise BrokerUnavailable(f"alpaca answered {error.status_code}: {_message(error)}") from error
            order = await self._call(self.client.get_order_by_id, order.id)
        return ack_of(order_id, order)

    async def _open(self) -> dict[str, Order]:
        """The account's open orders by client order id (Alpaca lists at most 500 a call)."""
        orders = await self._call(self.client.get_orders, GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500))
        return {str(o.client_order_id): o for o in orders if o.client_order_id}

    async def open_orders(self, strategy: str) -> list[BrokerOrder]:
        """Return the account's open orders of `strategy`: those whose client order id starts with the
        strategy's id and a dot (`client_order_id`), so a kill withdraws exactly that strategy's orders."""
        mine = f"{strategy}."
        return [BrokerOrder(order_id=order_id_of(client_id), strategy=strategy, symbol=str(o.symbol),
                            side="BUY" if _text(o.side) == "buy" else "SELL", quantity=float(o.qty or 0.0),
                            price=0.0, ts_event=int(o.created_at.timestamp() * 1e9))
                for client_id, o in sorted((await self._open()).items()) if client_id.startswith(mine)]

    async def cancel_many(self, orders: Sequence[BrokerOrder]) -> list[OrderAck]:
        """Cancel many orders in one listing and one call each (the kill switch): those the venue lists as open
        are cancelled by Alpaca's own id; the others have ended already (what they filled is booked by the
        next reconciliation). Answers in the order of `orders`."""
        listed = await self._open()

        async def one(sent: BrokerOrder) -> OrderAck:
            order_id = sent.order_id
            order = listed.get(client_order_id(sent))
            if order is None:
                return OrderAck(order_id=order_id, status="unknown", reason="not open at alpaca", endpoint=self.name)
            try:
                await self._call(self.client.cancel_order_by_id, order.id)
            except APIError as error:  # 422: no longer cancelable (it filled meanwhile)
                if error.status_code != 422:
                    raise BrokerUnavailable(f"alpaca answered {error.status_code}: {_message(error)}") from error
                return await self.status(sent)
            return OrderAck(order_id=order_id, status="canceled", endpoint=self.name)

        return list(await asyncio.gather(*(one(order) for order in orders)))

    async def trade_updates(self, on_answer: Callable[[OrderAck], Awaitable[None]]) -> None:
        """Follow the trade-updates stream until cancelled, handing each order's answer to `on_answer`."""
        loop = asyncio.get_running_loop()
        stream = TradingStream(self.config.api_key, self.config.secret_key, paper=self.config.paper,
                               url_override=self.config.stream_url or None)

        async def on_update(update: Any) -> None:  # in the stream's thread and loop
            event = _text(update.event)
            order = update.order
            if event in UPDATES and order.client_order_id:
                answer = ack_of(order_id_of(str(order.client_order_id)), order)
                asyncio.run_coroutine_threadsafe(on_answer(answer), loop)

        stream.subscribe_trade_updates(on_update)
        ended = asyncio.Event()

        def run() -> None:
            try:
                stream.run()
            finally:
                with contextlib.suppress(RuntimeError):  # the service's loop closed first
                    loop.call_soon_threadsafe(ended.set)

        # A daemon thread: the SDK's loop notices a stop within its 5 s receive timeout, and a service that
        # stops does not wait for it.
        threading.Thread(target=run, name="alpaca-trade-updates", daemon=True).start()
        try:
            await ended.wait()
        finally:
            with contextlib.suppress(AttributeError, RuntimeError):  # never connected: nothing to stop
                stream.stop()

    async def positions(self) -> dict[str, float]:
        positions = await self._call(self.client.get_all_positions)
        return {p.symbol: float(p.qty) for p in positions}  # Alpaca's qty is negative for a short

    async def account(self) -> Account:
        account = await self._call(self.client.get_account)
        return Account(cash=float(account.cash or 0.0), equity=float(account.equity or 0.0),
                       currency=str(account.currency or "USD"), buying_power=float(account.buying_power or 0.0))


def _status(order: Order) -> str:
    """An order's status as Alpaca's word for it (the SDK gives an enum, or the text for a status it lacks)."""
    return _text(order.status)


def _text(value: object) -> str:
    return str(getattr(value, "value", value))


def _code(error: APIError) -> int | None:
    try:
        return int(json.loads(str(error)).get("code"))
    except (ValueError, TypeError, AttributeError):
        return None


def _message(error: APIError) -> str:
    try:
        return str(json.loads(str(error)).get("message", error))
    except (ValueError, TypeError, AttributeError):
        return str(error)[:300]


def client_order_id(order: BrokerOrder) -> str:
    """Alpaca's client order id for QMP's order: the strategy's id, a dot, the rest of the order id.

    QMP's order ids start with `<strategy>-`, and a strategy's id may hold a dash (`mom-2`), so by them
    alone `mom`'s orders could not be told from `mom-2`'s. A strategy's id never holds a dot (it is a
    subject token): the orders of `mom` are exactly those whose client order id starts with `mom.`.
    """
    head = f"{order.strategy}-"
    if order.order_id.startswith(head):
        return f"{order.strategy}.{order.order_id.removeprefix(head)}"
    return order.order_id


def order_id_of(client_id: str) -> str:
    """QMP's order id for an Alpaca client order id (`client_order_id` read back)."""
    strategy, dot, rest = client_id.partition(".")
    return f"{strategy}-{rest}" if dot else client_id


def config_from(api_key: str, secret_key: str, secrets_file: str, paper: bool, url: str,
                fill_wait_s: float, stream_url: str = "") -> AlpacaConfig:
    """Return the adapter's configuration from execution's settings (credentials checked here, at start).

    Alpaca serves the trade-updates stream on the trading API's host (`wss://<host>/stream`), so another
    trading URL moves the stream with it unless a stream URL of its own is given: an execution pointed at a
    proxy or a fake venue never opens a stream to Alpaca itself.
    """
    key, secret = load_credentials("Alpaca", "QMP_ALPACA", api_key, secret_key, secrets_file)
    if url and not stream_url:
        stream_url = url.rstrip("/").replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/stream"
    return AlpacaConfig(api_key=key, secret_key=secret, paper=paper, url=url, fill_wait_s=fill_wait_s,
                        stream_url=stream_url)

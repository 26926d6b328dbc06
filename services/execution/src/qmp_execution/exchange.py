"""A crypto exchange behind `BrokerAdapter`, through ccxt: one adapter for every exchange ccxt supports.

Symbols are ccxt's unified symbols (`BTC/USDT`); the account is a spot account whose cash is the `quote`
currency and whose positions are the balances of the markets' base currencies.

Idempotency. Exchanges limit client order ids (Binance: 36 characters of `[.A-Z:/a-z0-9_-]`, OKX: 32
letters and digits), and QMP's order ids are longer, so each order goes out under a client order id made of
QMP's: 6 hex characters that name the strategy, then 24 that name the order (BLAKE2b). The same order always
gets the same client order id, in any process. Some exchanges refuse a client order id only while its
order is open (Binance), so before sending, the adapter asks the exchange for the client order id: an order
the exchange already has is never sent again, whatever its state (`lookup_before_submit`; one more request
per order). A submit whose answer is lost (a timeout) is looked up the same way before it is reported.

Answers. ccxt's `open` order → accepted (partially_filled once something filled), `closed` → filled,
`canceled` / `expired` → canceled, `rejected` → rejected, each with the fills so far: one per trade when the
exchange reports them with the order (Binance's FULL answer), else one at the average price. A fee taken in
the base currency is booked at its value in the quote currency.

Errors. The exchange refusing an order (ccxt's InvalidOrder, InsufficientFunds, BadSymbol, BadRequest) is a
`rejected` answer with its message; a rate limit (429, ccxt's RateLimitExceeded / DDoSProtection) is
retried `retries` times with a doubling wait, then, like refused credentials and an unreachable exchange,
raises `BrokerUnavailable`. ccxt's own throttle keeps requests under the exchange's published rate
(`rate_limit_ms` overrides it).
"""

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar

from ccxt.base import errors
from msgspec import Meta, Struct

from qmp_execution.engine.broker import Account, AckStatus, BrokerFill, BrokerOrder, OrderAck
from qmp_execution.rest import BrokerUnavailable
from qmp_venues.ccxt_exchange import make_exchange
from qmp_venues.credentials import load_credentials

T = TypeVar("T")

REFUSALS = (errors.InvalidOrder, errors.InsufficientFunds, errors.BadSymbol, errors.BadRequest,
            errors.PermissionDenied)
RATE_LIMITED = (errors.RateLimitExceeded, errors.DDoSProtection)
ENDED = (errors.OrderNotFound, errors.OperationRejected, errors.InvalidOrder)  # a cancel of an order that ended
KNOWN_KEPT = 65_536  # QMP orders remembered by client order id (to name the exchange's open orders after QMP's)
STRATEGY_TAG = 6  # hex characters of a client order id that name the strategy
ORDER_TAG = 24  # and those that name the order


class ExchangeConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    exchange: str = "binance"  # a ccxt exchange id
    api_key: str
    secret_key: str
    sandbox: bool = True  # the exchange's testnet (the rollout's paper phase); False: the live exchange
    url: str = ""  # another base URL for every API of the exchange (a fake exchange in tests)
    quote: str = "USDT"  # the account's cash currency
    fill_wait_s: Annotated[float, Meta(ge=0.0)] = 2.0
    poll_s: Annotated[float, Meta(gt=0.0)] = 0.05
    max_concurrency: Annotated[int, Meta(ge=1)] = 8
    retries: Annotated[int, Meta(ge=0)] = 3
    retry_wait_s: Annotated[float, Meta(ge=0.0)] = 0.5
    rate_limit_ms: Annotated[float, Meta(ge=0.0)] = 0.0  # 0: the exchange's own, as ccxt knows it
    lookup_before_submit: bool = True
    options: dict[str, Any] = {}  # ccxt options of the exchange

    def __repr__(self) -> str:  # never print the secret, whoever prints the settings
        return (f"ExchangeConfig(exchange={self.exchange!r}, sandbox={self.sandbox}, url={self.url!r}, "
                f"api_key=***, secret_key=***)")


def client_order_id(order: BrokerOrder) -> str:
    """The client order id QMP's order goes out under (an id that is one already is kept)."""
    if is_client_order_id(order.order_id):
        return order.order_id
    return strategy_tag(order.strategy) + _digest(order.order_id, ORDER_TAG)


def strategy_tag(strategy: str) -> str:
    return _digest(strategy, STRATEGY_TAG)


def is_client_order_id(text: str) -> bool:
    return len(text) == STRATEGY_TAG + ORDER_TAG and all(c in "0123456789abcdef" for c in text)


def _digest(text: str, length: int) -> str:
    return hashlib.blake2b(text.encode(), digest_size=length // 2).hexdigest()


def exchange_of(config: ExchangeConfig) -> Any:
    return make_exchange(config.exchange, config.api_key, config.secret_key, config.sandbox, config.url,
                         config.options, config.rate_limit_ms)


def ack_of(order_id: str, order: dict[str, Any], market: dict[str, Any] | None = None) -> OrderAck:
    """Return QMP's answer for a ccxt order structure."""
    filled = float(order.get("filled") or 0.0)
    status = order.get("status")
    ack: AckStatus
    if status == "open":
        ack = "partially_filled" if filled > 0.0 else "accepted"
    elif status == "closed":
        ack = "filled"
    elif status in ("canceled", "expired"):
        ack = "canceled"
    elif status == "rejected":
        ack = "rejected"
    else:
        ack = "unknown"
    return OrderAck(order_id=order_id, status=ack, fills=_fills(order_id, order, filled, market),
                    reason="" if ack != "unknown" else str(status), endpoint=str(order.get("_exchange", "")))


def _fills(order_id: str, order: dict[str, Any], filled: float, market: dict[str, Any] | None) -> list[BrokerFill]:
    base = market["base"] if market else ""

    def fee(entry: dict[str, Any] | None, price: float) -> float:
        if not entry or entry.get("cost") is None:
            return 0.0
        cost = float(entry["cost"])
        return cost * price if base and entry.get("currency") == base else cost

    trades = [t for t in order.get("trades") or [] if float(t.get("amount") or 0.0) > 0.0]
    if trades and abs(sum(float(t["amount"]) for t in trades) - filled) <= 1e-9 * max(1.0, filled):
        return [BrokerFill(fill_id=f"{order_id}-{t.get('id') or i}", quantity=float(t["amount"]),
                           price=float(t["price"]), fee=fee(t.get("fee"), float(t["price"])))
                for i, t in enumerate(trades)]
    average = order.get("average") or (float(order["cost"]) / filled if filled and order.get("cost") else None)
    if filled <= 0.0 or not average:
        return []
    return [BrokerFill(fill_id=f"{order_id}-exchange", quantity=filled, price=float(average),
                       fee=fee(order.get("fee"), float(average)))]


class ExchangeAdapter:
    """The BrokerAdapter interface over a ccxt exchange."""

    def __init__(self, config: ExchangeConfig, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.config = config
        self.name = config.exchange
        self.exchange = exchange_of(config)
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._sleep = sleep
        self._known: OrderedDict[str, BrokerOrder] = OrderedDict()  # client order id → QMP's order (bounded)
        self.sent = 0  # orders the exchange took
        self.found = 0  # orders the exchange already had (a retry or a restart): not sent twice

    async def close(self) -> None:
        await self.exchange.close()

    async def _call(self, call: Callable[..., Awaitable[T]], *args: Any,
                    passthrough: tuple[type[Exception], ...] = (errors.OrderNotFound,)) -> T:
        """Call ccxt; retry rate limits. Errors in `passthrough` reach the caller; any other error of the
        exchange or the network raises BrokerUnavailable (the venue could not say)."""
        wait = self.config.retry_wait_s
        for attempt in range(self.config.retries + 1):
            async with self._slots:
                try:
                    return await call(*args)
                except passthrough:
                    raise
                except RATE_LIMITED as error:
                    if attempt == self.config.retries:
                        raise BrokerUnavailable(f"{self.name} rate limit: {_message(error)}") from error
                except errors.BaseError as error:
                    raise BrokerUnavailable(f"{self.name} did not answer: {type(error).__name__}: "
                                            f"{_message(error)}") from error
            await self._sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")

    async def _load_markets(self) -> None:
        """ccxt needs the exchange's markets to name symbols and parse orders: asked for once."""
        if not self.exchange.markets:
            await self._call(self.exchange.load_markets)

    async def _market(self, symbol: str) -> dict[str, Any]:
        await self._load_markets()
        try:
            return dict(self.exchange.market(symbol))
        except errors.BadSymbol:
            return {}

    async def _lookup(self, client_id: str, symbol: str) -> dict[str, Any] | None:
        """The exchange's order under this client order id, or None when it has none."""
        try:
            return await self._call(self.exchange.fetch_order, None, symbol, {"clientOrderId": client_id})
        except errors.OrderNotFound:
            return None

    def _ack(self, order: BrokerOrder, placed: dict[str, Any], market: dict[str, Any]) -> OrderAck:
        return ack_of(order.order_id, {**placed, "_exchange": self.name}, market)

    def _remember(self, client_id: str, order: BrokerOrder) -> None:
        self._known[client_id] = order
        self._known.move_to_end(client_id)
        while len(self._known) > KNOWN_KEPT:
            self._known.popitem(last=False)

    async def submit(self, order: BrokerOrder) -> OrderAck:
        client_id = client_order_id(order)
        self._remember(client_id, order)
        market = await self._market(order.symbol)
        if not market:
            return OrderAck(order_id=order.order_id, status="rejected", endpoint=self.name,
                            reason=f"{self.name} has no market {order.symbol!r}")
        placed = await self._lookup(client_id, order.symbol) if self.config.lookup_before_submit else None
        if placed is not None:
            self.found += 1
        else:
            try:
                placed = await self._call(self.exchange.create_order, order.symbol, "market",
                                          "buy" if order.side == "BUY" else "sell", abs(order.quantity), None,
                                          {"clientOrderId": client_id}, passthrough=REFUSALS)
                self.sent += 1
            except REFUSALS as error:  # a duplicate client order id is a refusal too: is the order there?
                placed = await self._lookup(client_id, order.symbol)
                if placed is None:
                    return OrderAck(order_id=order.order_id, status="rejected", endpoint=self.name,
                                    reason=f"{self.name} refused the order: {_message(error)}")
                self.found += 1
            except BrokerUnavailable:  # the answer was lost (a timeout, a 5xx): the order may be there
                placed = await self._lookup(client_id, order.symbol)
                if placed is None:
                    raise
                self.found += 1
        return self._ack(order, await self._settle(placed, order.symbol), market)

    async def submit_many(self, orders: Sequence[BrokerOrder]) -> list[OrderAck]:
        """Submit concurrently (at most `max_concurrency` calls at once); acks in the order of `orders`."""
        return list(await asyncio.gather(*(self.submit(order) for order in orders)))

    async def _settle(self, placed: dict[str, Any], symbol: str) -> dict[str, Any]:
        """Poll the order until it is no longer open, or `fill_wait_s` has passed."""
        deadline = time.monotonic() + self.config.fill_wait_s
        while placed.get("status") == "open" and time.monotonic() < deadline:
            await self._sleep(self.config.poll_s)
            placed = await self._call(self.exchange.fetch_order, placed["id"], symbol)
        return placed

    def _unknown(self, order: BrokerOrder, why: str) -> OrderAck:
        return OrderAck(order_id=order.order_id, status="unknown", reason=why, endpoint=self.name)

    async def status(self, order: BrokerOrder) -> OrderAck:
        """Return the order as the exchange reports it now: its fills so far (cumulative), or `unknown`."""
        client_id = client_order_id(order)
        self._remember(client_id, order)
        placed = await self._lookup(client_id, order.symbol)
        if placed is None:
            return self._unknown(order, f"{self.name} has no such order")
        return self._ack(order, placed, await self._market(order.symbol))

    async def cancel(self, order: BrokerOrder) -> OrderAck:
        placed = await self._lookup(client_order_id(order), order.symbol)
        if placed is None:
            return self._unknown(order, f"{self.name} has no such order")
        return await self._cancel_placed(order, placed)

    async def _cancel_placed(self, order: BrokerOrder, placed: dict[str, Any]) -> OrderAck:
        market = await self._market(order.symbol)
        if placed.get("status") == "open":
            try:
                placed = await self._call(self.exchange.cancel_order, placed["id"], order.symbol, passthrough=ENDED)
            except ENDED:  # it filled meanwhile: report what it is
                placed = await self._call(self.exchange.fetch_order, placed["id"], order.symbol)
        return self._ack(order, placed, market)

    async def _open(self) -> list[dict[str, Any]]:
        await self._load_markets()
        return list(await self._call(self.exchange.fetch_open_orders))

    async def open_orders(self, strategy: str) -> list[BrokerOrder]:
        """Return the exchange's open orders of `strategy` (their client order ids start with its tag): QMP's
        order where this process knows it, else the order under its client order id."""
        tag = strategy_tag(strategy)
        listed = []
        for placed in await self._open():
            client_id = str(placed.get("clientOrderId") or "")
            if not client_id.startswith(tag) or not is_client_order_id(client_id):
                continue
            known = self._known.get(client_id)
            if known is None:
                known = BrokerOrder(order_id=client_id, strategy=strategy, symbol=str(placed["symbol"]),
                                    side="BUY" if placed.get("side") == "buy" else "SELL",
                                    quantity=float(placed.get("amount") or 0.0),
                                    price=float(placed.get("price") or 0.0),
                                    ts_event=int(placed.get("timestamp") or 0) * 1_000_000)
                self._remember(client_id, known)
            listed.append(known)
        return sorted(listed, key=lambda o: o.order_id)

    async def cancel_many(self, orders: Sequence[BrokerOrder]) -> list[OrderAck]:
        """Cancel many orders after one listing of the open ones (the kill switch): those listed are cancelled
        at once; the others are asked about (what they filled is booked by reconciliation)."""
        listed = {str(p.get("clientOrderId") or ""): p for p in await self._open()}

        async def one(order: BrokerOrder) -> OrderAck:
            placed = listed.get(client_order_id(order))
            if placed is None:
                return await self.status(order)
            return await self._cancel_placed(order, placed)

        return list(await asyncio.gather(*(one(order) for order in orders)))

    async def _holdings(self) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        """The account's balances by currency (total, free) and its positions by symbol: a position is the balance
        of the base currency of a spot market against the cash currency."""
        await self._load_markets()
        balance = await self._call(self.exchange.fetch_balance)
        total = {k: float(v or 0.0) for k, v in (balance.get("total") or {}).items()}
        free = {k: float(v or 0.0) for k, v in (balance.get("free") or {}).items()}
        by_base = {m["base"]: symbol for symbol, m in self.exchange.markets.items()
                   if m.get("spot") and m.get("quote") == self.config.quote}
        return total, free, {by_base[c]: q for c, q in total.items() if c in by_base and q != 0.0}

    async def positions(self) -> dict[str, float]:
        return (await self._holdings())[2]

    async def account(self) -> Account:
        total, free, held = await self._holdings()
        value = 0.0
        if held:
            prices = await self._call(self.exchange.fetch_last_prices, list(held))
            value = sum(q * float(prices[s]["price"]) for s, q in held.items())
        cash = total.get(self.config.quote, 0.0)
        return Account(cash=cash, equity=cash + value, currency=self.config.quote,
                       buying_power=free.get(self.config.quote, 0.0))


def _message(error: Exception) -> str:
    """The exchange's words: ccxt prefixes its exchange id, and some messages hold the exchange's JSON body."""
    _, _, text = str(error).partition(" ")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(parsed, dict):
        return str(parsed.get("msg") or parsed.get("message") or text)[:300]
    return text[:300]


def config_from(exchange: str, api_key: str, secret_key: str, secrets_file: str, sandbox: bool, url: str,
                quote: str, fill_wait_s: float, rate_limit_ms: float) -> ExchangeConfig:
    """Return the adapter's configuration from execution's settings (credentials checked here, at start)."""
    key, secret = load_credentials(f"the exchange {exchange}", "QMP_EXCHANGE", api_key, secret_key, secrets_file)
    return ExchangeConfig(exchange=exchange, api_key=key, secret_key=secret, sandbox=sandbox, url=url, quote=quote,
                          fill_wait_s=fill_wait_s, rate_limit_ms=rate_limit_ms)

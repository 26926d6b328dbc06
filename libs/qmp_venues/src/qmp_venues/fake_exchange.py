"""A fake crypto exchange on loopback, for tests: Binance's Spot REST API (`/api/v3`) as Binance documents it —
the JSON shapes, the error bodies `{"code", "msg"}` and their codes, HMAC-SHA256 signed requests.

ccxt's `binance` is pointed at it by URL (`exchange.CcxtAdapter` with `url=fake.url`), so ccxt does the talking.
What it implements: `GET exchangeInfo` (the markets), `POST order` (MARKET orders; `newClientOrderId` unique
among open orders, as Binance has it: -2010 "Duplicate order sent."), `GET order` and `DELETE order` (by
`orderId` or `origClientOrderId`; -2013 / -2011 for an order it does not know or that is no longer open),
`GET openOrders`, `GET account` (balances), `GET myTrades`, `GET ticker/price`, `GET klines` (the bars
`add_bars` gave it: [open time, open, high, low, close, volume, close time, ...] with prices as strings). A request
without the API key header gets 401 -2015, a bad signature 400 -1022; `rate_limited` answers 429 -1003 with
`Retry-After`; `lose_answers` takes an order and answers 503 -1007 (Binance: "execution status unknown").

It is a spot account: a sell needs the base asset (else -2010 insufficient balance). Orders fill at
`prices[symbol]` after `fill_delay_s` (of wall time, checked when the order is read), up to `fill_ratio` of
their quantity; the commission (`fee_rate`) is taken in the quote asset.
"""

import hashlib
import hmac
import itertools
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from qmp_venues.fake_venue import Bar, LoopbackServer, append_bars

OPEN = ("NEW", "PARTIALLY_FILLED")


@dataclass
class ExchangeBehaviour:
    """How the fake answers; fields may be changed while it runs."""

    fill_delay_s: float = 0.0
    fill_ratio: float = 1.0  # below 1: orders stop partially filled
    rate_limited: int = 0  # answer the next n requests with 429
    refuse_symbols: set[str] = field(default_factory=set)  # -2010: insufficient balance
    lose_answers: int = 0  # take the next n orders, then answer 503 -1007 (execution status unknown)


@dataclass
class _Trade:
    id: int
    price: float
    qty: float
    commission: float
    time_ms: int


@dataclass
class _Order:
    order_id: int
    client_order_id: str
    symbol: str  # Binance's market id, e.g. BTCUSDT
    side: str  # BUY / SELL
    qty: float
    time_ms: int
    status: str = "NEW"
    trades: list[_Trade] = field(default_factory=list)

    @property
    def executed(self) -> float:
        return sum(t.qty for t in self.trades)

    @property
    def quote(self) -> float:
        return sum(t.qty * t.price for t in self.trades)


def _error(status: int, code: int, msg: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status, headers=headers)


def _now_ms() -> int:
    return int(time.time() * 1000)


class FakeExchange:
    """The fake exchange: its markets, accounts and order book of one account, and the server."""

    def __init__(self, key: str = "test-key", secret: str = "test-secret",
                 markets: dict[str, tuple[str, str]] | None = None, balances: dict[str, float] | None = None,
                 prices: dict[str, float] | None = None, fee_rate: float = 0.001) -> None:
        self.key, self.secret = key, secret
        # market id → (base asset, quote asset)
        self.markets = dict(markets or {"BTCUSDT": ("BTC", "USDT"), "ETHUSDT": ("ETH", "USDT")})
        self.balances = dict(balances or {"USDT": 100_000.0})
        self.prices = dict(prices or {"BTCUSDT": 60_000.0, "ETHUSDT": 3_000.0})
        self.fee_rate = fee_rate
        self.behaviour = ExchangeBehaviour()
        self.orders: dict[int, _Order] = {}
        self.order_posts = 0  # POST /api/v3/order received, refused ones included
        self.requests = 0
        self.bars: dict[str, list[Bar]] = {}  # market → klines
        self.interval_ms = 60_000  # the klines' interval
        self._ids = itertools.count(1_000_001)
        self._trade_ids = itertools.count(5_000_001)
        self._server = LoopbackServer()

    @property
    def url(self) -> str:
        return self._server.url

    # ------------------------------------------------------------ server
    async def start(self) -> str:
        app = web.Application(middlewares=[self._gate])
        app.router.add_get("/api/v3/exchangeInfo", self._exchange_info)
        app.router.add_post("/api/v3/order", self._post_order)
        app.router.add_get("/api/v3/order", self._get_order)
        app.router.add_delete("/api/v3/order", self._cancel)
        app.router.add_get("/api/v3/openOrders", self._open_orders)
        app.router.add_get("/api/v3/account", self._account)
        app.router.add_get("/api/v3/myTrades", self._my_trades)
        app.router.add_get("/api/v3/ticker/price", self._ticker_price)
        app.router.add_get("/api/v3/klines", self._klines)
        return await self._server.serve(app)

    async def stop(self) -> None:
        await self._server.stop()

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests += 1
        if self.behaviour.rate_limited > 0:
            self.behaviour.rate_limited -= 1
            return _error(429, -1003, "Too much request weight used; current limit is 6000 request weight per "
                          "1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
                          headers={"Retry-After": "1"})
        public = request.path in ("/api/v3/exchangeInfo", "/api/v3/ticker/price", "/api/v3/klines")
        if not public:
            if request.headers.get("X-MBX-APIKEY") != self.key:
                return _error(401, -2015, "Invalid API-key, IP, or permissions for action.")
            payload = request.query_string if request.method != "POST" else (await request.text())
            signed, _, signature = payload.rpartition("&signature=")
            expected = hmac.new(self.secret.encode(), signed.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, signature):
                return _error(400, -1022, "Signature for this request is not valid.")
        return await handler(request)

    @staticmethod
    async def _params(request: web.Request) -> dict[str, str]:
        params = dict(request.query)
        if request.method == "POST":
            params.update({k: unquote(v) for k, v in (await request.post()).items() if isinstance(v, str)})
        return params

    # ------------------------------------------------------------ the book
    def _advance(self, order: _Order) -> None:
        """Fill an order whose delay has passed, as far as `fill_ratio` lets it (one trade each time)."""
        if order.status not in OPEN or _now_ms() - order.time_ms < self.behaviour.fill_delay_s * 1000:
            return
        quantity = order.qty * min(max(self.behaviour.fill_ratio, 0.0), 1.0) - order.executed
        if quantity <= 1e-12:
            return
        price = self.prices[order.symbol]
        base, quote = self.markets[order.symbol]
        commission = quantity * price * self.fee_rate
        signed = quantity if order.side == "BUY" else -quantity
        self.balances[base] = self.balances.get(base, 0.0) + signed
        self.balances[quote] = self.balances.get(quote, 0.0) - signed * price - commission
        order.trades.append(_Trade(next(self._trade_ids), price, quantity, commission, _now_ms()))
        order.status = "FILLED" if order.executed >= order.qty - 1e-12 else "PARTIALLY_FILLED"

    def _json(self, order: _Order) -> dict[str, Any]:
        """An order as `GET /api/v3/order` answers it."""
        self._advance(order)
        return {
            "symbol": order.symbol, "orderId": order.order_id, "orderListId": -1,
            "clientOrderId": order.client_order_id, "price": "0.00000000", "origQty": f"{order.qty:.8f}",
            "executedQty": f"{order.executed:.8f}", "cummulativeQuoteQty": f"{order.quote:.8f}",
            "status": order.status, "timeInForce": "GTC", "type": "MARKET", "side": order.side,
            "stopPrice": "0.00000000", "icebergQty": "0.00000000", "time": order.time_ms,
            "updateTime": order.trades[-1].time_ms if order.trades else order.time_ms,
            "isWorking": True, "workingTime": order.time_ms, "origQuoteOrderQty": "0.00000000",
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }

    def _find(self, params: dict[str, str]) -> _Order | None:
        if "orderId" in params:
            return self.orders.get(int(params["orderId"]))
        wanted = params.get("origClientOrderId", "")
        # The latest order under a client order id (Binance lets one be reused once the first is closed).
        found = [o for o in self.orders.values() if o.client_order_id == wanted and o.symbol == params.get("symbol")]
        return found[-1] if found else None

    def fill_all(self) -> None:
        """Fill every open order now (as the market would), whatever the delay."""
        delay, self.behaviour.fill_delay_s = self.behaviour.fill_delay_s, 0.0
        for order in self.orders.values():
            self._advance(order)
        self.behaviour.fill_delay_s = delay

    def place(self, client_order_id: str, symbol: str, qty: float, side: str = "BUY") -> None:
        """Place an order by hand (a person on the exchange's site, or another system on the account)."""
        order_id = next(self._ids)
        self.orders[order_id] = _Order(order_id, client_order_id, symbol, side, qty, _now_ms())

    def open_orders(self) -> list[str]:
        """The client order ids of the orders still open."""
        return sorted(o.client_order_id for o in self.orders.values() if o.status in OPEN)

    def add_bars(self, symbol: str, start_ms: int, closes: list[float], volume: float = 10.0) -> None:
        """Give a market one-interval bars from `start_ms` on (open = the previous close)."""
        append_bars(self.bars.setdefault(symbol, []), start_ms, self.interval_ms, closes, volume)

    def position(self, symbol: str) -> float:
        return self.balances.get(self.markets[symbol][0], 0.0)

    # ------------------------------------------------------------ handlers
    async def _exchange_info(self, request: web.Request) -> web.Response:
        symbols = [{
            "symbol": market, "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8, "quoteAsset": quote,
            "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8, "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
            "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True, "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True, "cancelReplaceAllowed": True, "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
                 "tickSize": "0.01000000"},
                {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000",
                 "stepSize": "0.00001000"},
                {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
                 "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
            ],
            "permissions": [], "permissionSets": [["SPOT"]], "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        } for market, (base, quote) in self.markets.items()]
        return web.json_response({
            "timezone": "UTC", "serverTime": _now_ms(),
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                           {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100}],
            "exchangeFilters": [], "symbols": symbols,
        })

    async def _post_order(self, request: web.Request) -> web.Response:
        self.order_posts += 1
        params = await self._params(request)
        symbol = params.get("symbol", "")
        if symbol not in self.markets:
            return _error(400, -1121, "Invalid symbol.")
        if params.get("type") != "MARKET" or "quantity" not in params:
            return _error(400, -1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.")
        client_id = params.get("newClientOrderId") or f"fake{next(self._ids)}"
        if any(o.client_order_id == client_id and o.status in OPEN for o in self.orders.values()):
            return _error(400, -2010, "Duplicate order sent.")
        side, qty = params.get("side", ""), float(params["quantity"])
        base, quote = self.markets[symbol]
        price = self.prices[symbol]
        short_of_base = side == "SELL" and self.balances.get(base, 0.0) < qty - 1e-12
        short_of_quote = side == "BUY" and self.balances.get(quote, 0.0) < qty * price * (1 + self.fee_rate)
        if symbol in self.behaviour.refuse_symbols or short_of_base or short_of_quote:
            return _error(400, -2010, "Account has insufficient balance for requested action.")
        order_id = next(self._ids)
        order = _Order(order_id, client_id, symbol, side, qty, _now_ms())
        self.orders[order_id] = order
        if self.behaviour.lose_answers > 0:
            self.behaviour.lose_answers -= 1
            return _error(503, -1007, "Timeout waiting for response from backend server. Send status unknown; "
                          "execution status unknown.")
        body = self._json(order)
        kind = params.get("newOrderRespType", "FULL")
        if kind == "ACK":
            return web.json_response({k: body[k] for k in ("symbol", "orderId", "orderListId", "clientOrderId")}
                                     | {"transactTime": order.time_ms})
        body = {k: v for k, v in body.items() if k not in ("time", "updateTime", "isWorking", "stopPrice",
                                                           "icebergQty", "origQuoteOrderQty")}
        body["transactTime"] = order.time_ms
        if kind == "FULL":
            body["fills"] = [{"price": f"{t.price:.8f}", "qty": f"{t.qty:.8f}", "commission": f"{t.commission:.8f}",
                              "commissionAsset": quote, "tradeId": t.id} for t in order.trades]
        return web.json_response(body)

    async def _get_order(self, request: web.Request) -> web.Response:
        order = self._find(await self._params(request))
        if order is None:
            return _error(400, -2013, "Order does not exist.")
        return web.json_response(self._json(order))

    async def _cancel(self, request: web.Request) -> web.Response:
        order = self._find(await self._params(request))
        if order is not None:
            self._advance(order)
        if order is None or order.status not in OPEN:
            return _error(400, -2011, "Unknown order sent.")
        order.status = "CANCELED"
        body = self._json(order)
        return web.json_response({k: body[k] for k in ("symbol", "orderId", "orderListId", "clientOrderId", "price",
                                                       "origQty", "executedQty", "cummulativeQuoteQty", "status",
                                                       "timeInForce", "type", "side", "selfTradePreventionMode")}
                                 | {"origClientOrderId": order.client_order_id, "transactTime": _now_ms()})

    async def _open_orders(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol")
        listed = [self._json(o) for o in list(self.orders.values()) if symbol in (None, o.symbol)]
        return web.json_response([o for o in listed if o["status"] in OPEN])

    async def _account(self, request: web.Request) -> web.Response:
        return web.json_response({
            "makerCommission": 10, "takerCommission": 10, "buyerCommission": 0, "sellerCommission": 0,
            "commissionRates": {"maker": "0.00100000", "taker": "0.00100000", "buyer": "0.00000000",
                                "seller": "0.00000000"},
            "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False, "updateTime": _now_ms(),
            "accountType": "SPOT", "permissions": ["SPOT"], "uid": 354937868,
            "balances": [{"asset": asset, "free": f"{amount:.8f}", "locked": "0.00000000"}
                         for asset, amount in self.balances.items()],
        })

    async def _my_trades(self, request: web.Request) -> web.Response:
        symbol, order_id = request.query.get("symbol"), request.query.get("orderId")
        rows = []
        for order in list(self.orders.values()):
            if order.symbol != symbol or (order_id is not None and str(order.order_id) != order_id):
                continue
            self._advance(order)
            quote = self.markets[order.symbol][1]
            rows += [{"symbol": order.symbol, "id": t.id, "orderId": order.order_id, "orderListId": -1,
                      "price": f"{t.price:.8f}", "qty": f"{t.qty:.8f}", "quoteQty": f"{t.qty * t.price:.8f}",
                      "commission": f"{t.commission:.8f}", "commissionAsset": quote, "time": t.time_ms,
                      "isBuyer": order.side == "BUY", "isMaker": False, "isBestMatch": True} for t in order.trades]
        return web.json_response(rows)

    async def _ticker_price(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol")
        if symbol is not None:
            if symbol not in self.prices:
                return _error(400, -1121, "Invalid symbol.")
            return web.json_response({"symbol": symbol, "price": f"{self.prices[symbol]:.8f}"})
        return web.json_response([{"symbol": s, "price": f"{p:.8f}"} for s, p in self.prices.items()])

    async def _klines(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        if symbol not in self.markets:
            return _error(400, -1121, "Invalid symbol.")
        start = int(request.query.get("startTime", "0"))
        end = int(request.query.get("endTime", str(2**62)))
        limit = min(int(request.query.get("limit", "500")), 1000)
        rows = [r for r in self.bars.get(symbol, []) if start <= r[0] <= end][:limit]
        return web.json_response([
            [t, f"{o:.8f}", f"{h:.8f}", f"{lo:.8f}", f"{c:.8f}", f"{v:.8f}", t + self.interval_ms - 1,
             f"{v * c:.8f}", 1, f"{v / 2:.8f}", f"{v * c / 2:.8f}", "0"] for t, o, h, lo, c, v in rows])

"""A fake Alpaca trading API on loopback, for tests: real HTTP (aiohttp), the JSON shapes of Alpaca's API
reference (v2 orders, positions, account; error bodies `{"code", "message"}`), scriptable behaviour.

The real SDK is pointed at it by URL (`TradingClient(..., url_override=fake.url)`), so alpaca-py does the
talking. What it implements: `POST /v2/orders` (market orders; 422 code 40010001 on a client_order_id it has
seen), `GET /v2/orders/{id}`, `GET /v2/orders:by_client_order_id`, `GET /v2/orders` (open ones),
`DELETE /v2/orders/{id}` (204; 422 once the order is no longer cancelable), `GET /v2/positions`,
`GET /v2/account`, the market-data API's `GET /v2/stocks/bars` (the bars `add_bars` gave it, one page), and
the trade-updates stream (`/stream`, a websocket: `authenticate`, then `listen` to
`trade_updates`; each fill, partial fill and cancel is pushed as a binary JSON frame, as Alpaca's streaming
documentation shows). Requests without the key headers get 401; a stream that authenticates with the wrong
ones is told `unauthorized` and closed. Orders fill at `prices[symbol]` after `fill_delay_s` (of wall time,
checked when the order is read), up to `fill_ratio` of their quantity. `drop_streams` cuts every stream (a
disconnect): what happens meanwhile is not pushed, as at Alpaca.
"""

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from qmp_venues.fake_venue import Bar, LoopbackServer, append_bars


@dataclass
class AlpacaBehaviour:
    """How the fake answers; fields may be changed while it runs."""

    fill_delay_s: float = 0.0
    fill_ratio: float = 1.0  # below 1: orders stop partially filled
    rate_limited: int = 0  # answer the next n requests with 429
    refuse_symbols: set[str] = field(default_factory=set)  # 403 insufficient buying power
    unknown_symbols: set[str] = field(default_factory=set)  # 422 asset not found


@dataclass
class _Order:
    id: str
    client_order_id: str
    symbol: str
    qty: float
    side: str
    created: datetime
    status: str = "accepted"
    filled_qty: float = 0.0
    filled_avg_price: float | None = None
    canceled_at: datetime | None = None
    filled_at: datetime | None = None


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _number(value: float) -> str:
    """A quantity or an amount as Alpaca writes it: a decimal string, fractional shares to 9 places."""
    return f"{value:.9f}".rstrip("0").rstrip(".") or "0"


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


class FakeAlpaca:
    """The fake venue: its book, its behaviour, and the server on a free loopback port."""

    def __init__(self, key: str = "test-key", secret: str = "test-secret", cash: float = 100_000.0,
                 prices: dict[str, float] | None = None) -> None:
        self.key, self.secret = key, secret
        self.cash = cash
        self.prices = dict(prices or {})
        self.behaviour = AlpacaBehaviour()
        self.orders: dict[str, _Order] = {}
        self.by_client_id: dict[str, str] = {}
        self.positions: dict[str, float] = {}
        self.cost: dict[str, float] = {}
        self.requests = 0
        self.order_posts = 0  # POST /v2/orders received, duplicates included
        self._server = LoopbackServer()
        self.url = ""
        self.bars: dict[str, list[Bar]] = {}  # one-minute bars
        self._listeners: set[web.WebSocketResponse] = set()
        self._sends: set[asyncio.Task[None]] = set()
        self.pushed = 0  # trade updates pushed on the stream

    # ------------------------------------------------------------ server
    async def start(self) -> str:
        app = web.Application(middlewares=[self._gate])
        app.router.add_post("/v2/orders", self._post_order)
        app.router.add_get("/v2/orders:by_client_order_id", self._get_by_client_id)
        app.router.add_get("/v2/orders/{order_id}", self._get_order)
        app.router.add_get("/v2/orders", self._list_orders)
        app.router.add_delete("/v2/orders/{order_id}", self._cancel)
        app.router.add_get("/v2/positions", self._positions)
        app.router.add_get("/v2/account", self._account)
        app.router.add_get("/stream", self._stream)
        app.router.add_get("/v2/stocks/bars", self._stock_bars)
        self.url = await self._server.serve(app)
        return self.url

    @property
    def stream_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/stream"

    async def stop(self) -> None:
        await self.drop_streams()
        await self._server.stop()

    async def drop_streams(self) -> None:
        """Close every trade-updates stream (the venue's side of a disconnect)."""
        for ws in list(self._listeners):
            await ws.close()
        self._listeners.clear()

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests += 1
        if request.path == "/stream":  # the stream authenticates in its first message
            return await handler(request)
        if request.headers.get("APCA-API-KEY-ID") != self.key or \
                request.headers.get("APCA-API-SECRET-KEY") != self.secret:
            return _error(401, 40110000, "request is not authorized")
        if self.behaviour.rate_limited > 0:
            self.behaviour.rate_limited -= 1
            return _error(429, 42910000, "rate limit exceeded")
        return await handler(request)

    # ------------------------------------------------------------ the book
    def _advance(self, order: _Order) -> None:
        """Fill an order whose delay has passed, as far as `fill_ratio` lets it."""
        if order.status not in ("accepted", "new", "partially_filled"):
            return
        if (datetime.now(UTC) - order.created).total_seconds() < self.behaviour.fill_delay_s:
            return
        target = order.qty * min(max(self.behaviour.fill_ratio, 0.0), 1.0)
        quantity = target - order.filled_qty
        if quantity <= 0:
            return
        price = self.prices.get(order.symbol, 100.0)
        signed = quantity if order.side == "buy" else -quantity
        order.filled_avg_price = price  # one price per order here: the average is that price
        order.filled_qty = target
        self.positions[order.symbol] = self.positions.get(order.symbol, 0.0) + signed
        self.cost[order.symbol] = self.cost.get(order.symbol, 0.0) + signed * price
        self.cash -= signed * price
        if target >= order.qty:
            order.status, order.filled_at = "filled", datetime.now(UTC)
        else:
            order.status = "partially_filled"
        self._push(order, "fill" if order.status == "filled" else "partial_fill", quantity, price)

    def _push(self, order: _Order, event: str, quantity: float | None = None, price: float | None = None) -> None:
        """Send a trade update to every stream listening (Alpaca's `trade_updates` message)."""
        if not self._listeners:
            return
        data: dict[str, Any] = {"event": event, "order": self._order_json(order),
                                "timestamp": _iso(datetime.now(UTC))}
        if quantity is not None:
            data |= {"execution_id": str(uuid.uuid4()), "qty": _number(quantity), "price": _number(price or 0.0),
                     "position_qty": _number(self.positions.get(order.symbol, 0.0))}
        frame = json.dumps({"stream": "trade_updates", "data": data}).encode()
        for ws in list(self._listeners):
            task = asyncio.get_running_loop().create_task(ws.send_bytes(frame))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
        self.pushed += 1

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            body = json.loads(message.data)
            if body.get("action") in ("auth", "authenticate"):
                data = body.get("data", {})
                ok = (data.get("key_id"), data.get("secret_key")) == (self.key, self.secret)
                reply = {"stream": "authorization", "data": {"action": "authenticate",
                                                             "status": "authorized" if ok else "unauthorized"}}
                await ws.send_bytes(json.dumps(reply).encode())
                if not ok:
                    await ws.close()
            elif body.get("action") == "listen":
                streams = [s for s in body.get("data", {}).get("streams", []) if s == "trade_updates"]
                await ws.send_bytes(json.dumps({"stream": "listening", "data": {"streams": streams}}).encode())
                if streams:
                    self._listeners.add(ws)
        self._listeners.discard(ws)
        return ws

    def _json(self, order: _Order) -> dict[str, Any]:
        self._advance(order)
        return self._order_json(order)

    def _order_json(self, order: _Order) -> dict[str, Any]:
        created = _iso(order.created)
        return {
            "id": order.id, "client_order_id": order.client_order_id, "created_at": created,
            "updated_at": created, "submitted_at": created, "filled_at": _iso(order.filled_at),
            "expired_at": None, "canceled_at": _iso(order.canceled_at), "failed_at": None, "replaced_at": None,
            "replaced_by": None, "replaces": None, "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, order.symbol)),
            "symbol": order.symbol, "asset_class": "us_equity", "notional": None, "qty": _number(order.qty),
            "filled_qty": _number(order.filled_qty),
            "filled_avg_price": None if order.filled_avg_price is None else _number(order.filled_avg_price),
            "order_class": "", "order_type": "market", "type": "market", "side": order.side,
            "time_in_force": "day", "limit_price": None, "stop_price": None, "status": order.status,
            "extended_hours": False, "legs": None, "trail_percent": None, "trail_price": None, "hwm": None,
            "position_intent": "buy_to_open" if order.side == "buy" else "sell_to_close",
        }

    def fill_all(self) -> None:
        """Fill every open order now (as the market would), whatever the delay."""
        delay, self.behaviour.fill_delay_s = self.behaviour.fill_delay_s, 0.0
        for order in self.orders.values():
            self._advance(order)
        self.behaviour.fill_delay_s = delay

    def add_bars(self, symbol: str, start_ms: int, closes: list[float], volume: float = 1_000.0) -> None:
        """Give a symbol one-minute bars from `start_ms` on (open = the previous close)."""
        append_bars(self.bars.setdefault(symbol, []), start_ms, 60_000, closes, volume)

    def set_position(self, symbol: str, quantity: float) -> None:
        """Change a position at the venue by hand (as a person at the broker would)."""
        self.positions[symbol] = quantity

    def place(self, client_order_id: str, symbol: str, qty: float, side: str = "buy") -> None:
        """Place an order at the venue by hand (a person at the broker, or another system on the account)."""
        order = _Order(id=str(uuid.uuid4()), client_order_id=client_order_id, symbol=symbol, qty=qty, side=side,
                       created=datetime.now(UTC))
        self.orders[order.id] = order
        self.by_client_id[client_order_id] = order.id

    def open_orders(self) -> list[str]:
        """The client order ids of the orders still open (working) at the venue."""
        return sorted(o.client_order_id for o in self.orders.values()
                      if o.status in ("accepted", "new", "partially_filled"))

    # ------------------------------------------------------------ handlers
    async def _post_order(self, request: web.Request) -> web.Response:
        self.order_posts += 1
        body = await request.json()
        client_id = body.get("client_order_id") or str(uuid.uuid4())
        if client_id in self.by_client_id:
            return _error(422, 40010001, "client_order_id must be unique")
        symbol = str(body.get("symbol", ""))
        if symbol in self.behaviour.unknown_symbols:
            return _error(422, 40010001, f"asset \"{symbol}\" not found")
        if symbol in self.behaviour.refuse_symbols:
            return _error(403, 40310000, "insufficient buying power")
        if body.get("type") != "market" or body.get("qty") is None:
            return _error(422, 40010001, "this fake takes market orders with a qty")
        order = _Order(id=str(uuid.uuid4()), client_order_id=client_id, symbol=symbol, qty=float(body["qty"]),
                       side=str(body.get("side")), created=datetime.now(UTC))
        self.orders[order.id] = order
        self.by_client_id[client_id] = order.id
        await asyncio.sleep(0)
        return web.json_response(self._json(order))

    async def _get_order(self, request: web.Request) -> web.Response:
        order = self.orders.get(request.match_info["order_id"])
        if order is None:
            return _error(404, 40410000, "order not found")
        return web.json_response(self._json(order))

    async def _get_by_client_id(self, request: web.Request) -> web.Response:
        order_id = self.by_client_id.get(request.query.get("client_order_id", ""))
        if order_id is None:
            return _error(404, 40410000, "order not found")
        return web.json_response(self._json(self.orders[order_id]))

    async def _list_orders(self, request: web.Request) -> web.Response:
        listed = [self._json(o) for o in self.orders.values()]
        if request.query.get("status", "open") == "open":
            listed = [o for o in listed if o["status"] in ("accepted", "new", "partially_filled")]
        return web.json_response(listed)

    async def _cancel(self, request: web.Request) -> web.Response:
        order = self.orders.get(request.match_info["order_id"])
        if order is None:
            return _error(404, 40410000, "order not found")
        self._advance(order)
        if order.status not in ("accepted", "new", "partially_filled"):
            return _error(422, 42210000, "order is not cancelable")
        order.status, order.canceled_at = "canceled", datetime.now(UTC)
        self._push(order, "canceled")
        return web.Response(status=204)

    async def _positions(self, request: web.Request) -> web.Response:
        rows = []
        for symbol, qty in self.positions.items():
            if qty == 0:
                continue
            price = self.prices.get(symbol, 100.0)
            entry = abs(self.cost.get(symbol, qty * price) / qty)
            rows.append({
                "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, symbol)), "symbol": symbol, "exchange": "NASDAQ",
                "asset_class": "us_equity", "avg_entry_price": _number(entry), "qty": _number(qty),
                "qty_available": _number(qty), "side": "long" if qty > 0 else "short",
                "market_value": _number(qty * price), "cost_basis": _number(qty * entry),
                "unrealized_pl": _number(qty * (price - entry)), "unrealized_plpc": "0",
                "unrealized_intraday_pl": "0", "unrealized_intraday_plpc": "0", "current_price": _number(price),
                "lastday_price": _number(price), "change_today": "0", "asset_marginable": True,
            })
        return web.json_response(rows)

    async def _account(self, request: web.Request) -> web.Response:
        long_value = sum(q * self.prices.get(s, 100.0) for s, q in self.positions.items() if q > 0)
        short_value = sum(q * self.prices.get(s, 100.0) for s, q in self.positions.items() if q < 0)
        equity = self.cash + long_value + short_value
        return web.json_response({
            "id": "e6fe16f3-64a4-4921-8928-cadf02f92f98", "account_number": "PA0FAKE0001", "status": "ACTIVE",
            "crypto_status": "ACTIVE", "currency": "USD", "buying_power": _number(max(equity, 0.0) * 2),
            "regt_buying_power": _number(max(equity, 0.0) * 2), "daytrading_buying_power": "0",
            "non_marginable_buying_power": _number(max(self.cash, 0.0)), "cash": _number(self.cash),
            "accrued_fees": "0", "pending_transfer_in": "0", "portfolio_value": _number(equity),
            "pattern_day_trader": False, "trading_blocked": False, "transfers_blocked": False,
            "account_blocked": False, "created_at": "2024-01-02T15:00:00Z", "trade_suspended_by_user": False,
            "multiplier": "2", "shorting_enabled": True, "equity": _number(equity), "last_equity": _number(equity),
            "long_market_value": _number(long_value), "short_market_value": _number(short_value),
            "initial_margin": "0", "maintenance_margin": "0", "last_maintenance_margin": "0", "sma": "0",
            "daytrade_count": 0,
        })

    async def _stock_bars(self, request: web.Request) -> web.Response:
        if request.query.get("timeframe") not in ("1Min", "1T"):
            return _error(422, 42210000, "this fake serves one-minute bars")
        start = datetime.fromisoformat(request.query.get("start", "1970-01-01T00:00:00Z").replace("Z", "+00:00"))
        start_ms = int(start.timestamp() * 1000)
        limit = int(request.query.get("limit", "1000"))
        bars: dict[str, list[dict[str, Any]]] = {}
        for symbol in request.query.get("symbols", "").split(","):
            rows = [r for r in self.bars.get(symbol, []) if r[0] >= start_ms]
            if rows:
                bars[symbol] = [{"t": _iso(datetime.fromtimestamp(t / 1000, UTC)), "o": o, "h": h, "l": lo, "c": c,
                                 "v": v, "n": 10, "vw": c} for t, o, h, lo, c, v in rows]
        flat = [(s, b) for s, rows in bars.items() for b in rows][:limit]
        page: dict[str, list[dict[str, Any]]] = {}
        for symbol, bar in flat:
            page.setdefault(symbol, []).append(bar)
        return web.json_response({"bars": page, "next_page_token": None})

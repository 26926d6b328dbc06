"""A fake REST broker on loopback, for tests and benchmarks: real HTTP (aiohttp), scriptable behaviour.

One `FakeBrokerBook` (orders by idempotency key, positions, cash) can sit behind several servers, as a
real broker's primary and backup endpoints share one backend. Each server has its own `Behaviour`,
changeable while it runs: a base latency, failures (503), slow answers (the delay comes after the order
is taken, so a client timeout loses the answer but not the order), and flapping (every `flap_period`
requests the endpoint switches between healthy and `flap_mode`). Orders fill at once at their price ± `fill_bps`.
"""

import asyncio
import multiprocessing
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from qmp_venues.fake_venue import LoopbackServer

FlapMode = Literal["slow", "fail"]


@dataclass
class Behaviour:
    """How an endpoint answers; fields may be changed while it runs."""

    latency_s: float = 0.0
    fail: bool = False  # answer every request with 503
    fail_first: int = 0  # answer the first n requests with 503
    slow_s: float = 0.0  # extra delay of slow requests
    slow_first: int = 0  # the first n requests are slow (0 with slow_s > 0: every request)
    flap_period: int = 0  # every `flap_period` requests, switch between healthy and `flap_mode` (0: never)
    flap_mode: FlapMode = "slow"
    fill_bps: float = 1.0
    requests: int = 0

    def plan(self) -> tuple[float, bool]:
        """Return (delay, fail) for the next request."""
        self.requests += 1
        n = self.requests
        delay = self.latency_s
        if self.slow_s > 0.0 and (self.slow_first == 0 or n <= self.slow_first):
            delay += self.slow_s
        fail = self.fail or n <= self.fail_first
        if self.flap_period > 0 and (n // self.flap_period) % 2 == 1:
            if self.flap_mode == "fail":
                fail = True
            else:
                delay += max(self.slow_s, 0.5)
        return delay, fail


@dataclass
class FakeBrokerBook:
    """What the broker backend remembers; shared by its endpoints."""

    cash: float = 1_000_000.0
    positions: dict[str, float] = field(default_factory=dict)
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)  # idempotency key -> answer
    orders_taken: int = 0
    replays: int = 0

    def take(self, key: str, order: dict[str, Any], fill_bps: float) -> tuple[dict[str, Any], bool]:
        """Return (answer, replayed): a repeated key gets the first answer and changes nothing."""
        if key and key in self.responses:
            self.replays += 1
            return self.responses[key], True
        side = 1.0 if order["side"] == "BUY" else -1.0
        quantity, price = float(order["quantity"]), float(order["price"]) * (1.0 + side * fill_bps * 1e-4)
        self.orders_taken += 1
        self.positions[order["symbol"]] = self.positions.get(order["symbol"], 0.0) + side * quantity
        self.cash -= side * quantity * price
        answer = {"order_id": order["order_id"], "status": "filled",
                  "fills": [{"fill_id": f"{order['order_id']}-b1", "quantity": quantity, "price": price, "fee": 0.0}]}
        if key:
            self.responses[key] = answer
        return answer, False


class FakeBrokerServer:
    """One endpoint: an aiohttp server on 127.0.0.1 (a free port unless given)."""

    def __init__(self, book: FakeBrokerBook | None = None, behaviour: Behaviour | None = None, name: str = "fake",
                 port: int = 0) -> None:
        self.book = book or FakeBrokerBook()
        self.behaviour = behaviour or Behaviour()
        self.name = name
        self.port = port
        self._server = LoopbackServer(port)

    @property
    def url(self) -> str:
        return self._server.url

    async def start(self) -> "FakeBrokerServer":
        app = web.Application()
        app.add_routes([web.post("/v1/orders", self._submit), web.delete("/v1/orders/{order_id}", self._cancel),
                        web.get("/v1/positions", self._positions), web.get("/v1/account", self._account),
                        web.get("/v1/health", self._health)])
        await self._server.serve(app)
        self.port = self._server.port
        return self

    async def stop(self) -> None:
        await self._server.stop()

    async def _gate(self) -> web.Response | None:
        delay, fail = self.behaviour.plan()
        if delay > 0.0:
            await asyncio.sleep(delay)
        return web.json_response({"error": f"{self.name} unavailable"}, status=503) if fail else None

    async def _submit(self, request: web.Request) -> web.Response:
        delay, fail = self.behaviour.plan()
        if fail:
            await asyncio.sleep(delay)
            return web.json_response({"error": f"{self.name} unavailable"}, status=503)
        order = await request.json()
        missing = [k for k in ("order_id", "symbol", "side", "quantity", "price") if k not in order]
        if missing:
            return web.json_response({"error": f"missing fields {missing}"}, status=400)
        answer, replayed = self.book.take(request.headers.get("Idempotency-Key", ""), order,
                                          self.behaviour.fill_bps)
        if delay > 0.0:  # the order is taken first: a timeout loses the answer, not the order
            await asyncio.sleep(delay)
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        return web.json_response({**answer, "endpoint": self.name}, status=200 if replayed else 201, headers=headers)

    async def _cancel(self, request: web.Request) -> web.Response:
        refused = await self._gate()
        if refused is not None:
            return refused
        order_id = request.match_info["order_id"]
        why = "already filled" if order_id in self.book.responses else "no such order"
        return web.json_response({"order_id": order_id, "status": "rejected", "reason": why, "endpoint": self.name})

    async def _positions(self, request: web.Request) -> web.Response:
        refused = await self._gate()
        return refused or web.json_response(self.book.positions)

    async def _account(self, request: web.Request) -> web.Response:
        refused = await self._gate()
        if refused is not None:
            return refused
        return web.json_response({"cash": self.book.cash, "equity": self.book.cash, "currency": "USD"})

    async def _health(self, request: web.Request) -> web.Response:
        refused = await self._gate()
        return refused or web.json_response({"status": "ok", "endpoint": self.name})


def serve(ports: "multiprocessing.Queue[int]", latency_s: float, stop: Any) -> None:
    """Run one fake endpoint in this process until `stop` (a multiprocessing Event) is set (benchmarks)."""

    async def run() -> None:
        server = await FakeBrokerServer(behaviour=Behaviour(latency_s=latency_s)).start()
        ports.put(server.port)
        await asyncio.to_thread(stop.wait)
        await server.stop()

    asyncio.run(run())

